-- wrk script: a random key per request, from the file in KEYS_FILE (one key per line),
-- sent as X-API-Key to PATH_PREFIX (default /bench). Requests are rendered once at start so
-- the generator spends its time sending, not formatting.
local reqs = {}

init = function(args)
  local file = os.getenv("KEYS_FILE")
  local path = os.getenv("BENCH_PATH") or "/bench/hello"
  local method = os.getenv("BENCH_METHOD") or "GET"
  for line in io.lines(file) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format(method, path, { ["X-API-Key"] = line })
    end
  end
  math.randomseed(os.time())
end

request = function()
  return reqs[math.random(#reqs)]
end
