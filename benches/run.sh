#!/usr/bin/env bash
# tollgate load benchmark: the gateway side by side with nginx, in one run, on one machine.
#
#   benches/run.sh                 # full run (~8 min): writes benches/RESULTS.md
#   QUICK=1 benches/run.sh         # 1 run x 3 s per case, to try the script (RESULTS.quick.md)
#   SKIP_BUILD=1 benches/run.sh    # use the release binaries already in $CARGO_TARGET_DIR
#
# Every server is pinned to core $SERVER_CPU (taskset), wrk and the upstream to core $LOAD_CPU.
# Each case: $RUNS runs of $DURATION s at $CONNECTIONS connections (wrk, one thread, --latency),
# each after a 2 s warm-up; the table shows per-column medians. The cases compared with each
# other (b, c, d, e) run interleaved, round by round (b c d e, b c d e, ...), with all their
# servers up and only the measured one loaded: this VM's speed drifts by 10-30 % over minutes,
# and interleaving spreads the drift over every case instead of onto whichever ran last.
# Server CPU is utime+stime from /proc/<pid>/stat (the whole process: every thread, and for
# nginx the master and its worker) over each run, divided by the requests wrk completed.
#
# Cases:
#   a  upstream        nginx `return 200` directly (a second instance of the upstream, on core 0)
#   b  nginx proxy     nginx proxy_pass to the upstream, keepalive pool, 1 worker
#   c  gateway         tollgate-gateway, 1 worker thread, key check + local quotas, a random key
#                      of $KEYS per request, remote backend (on the load core, as in a fleet)
#   c' gateway (emb.)  the same with the embedded backend (one process; its usage ingest counts)
#   d  validate        POST /api/marketplace/keys/validate alone (X-API-Key), same gateway as c
#   e  gateway + Redis `[gateway] redis_url` on a private redis-server (port $REDIS_PORT) that
#                      runs on the load core
#   placement          b and c again with the upstream on the server's core, to show why the
#                      upstream sits on the load core (see RESULTS.md)
#   memory             RSS and load time of a gateway holding a 1 M-key snapshot
#
# Nothing is left running: every process started here is stopped on exit (also on Ctrl-C).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-10000}
SNAPSHOT_KEYS=${SNAPSHOT_KEYS:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PLACEMENT=${PLACEMENT:-1}
OUT=${OUT:-$ROOT/benches/RESULTS.md}
if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION=3 RUNS=1 SNAPSHOT_KEYS=${SNAPSHOT_KEYS_QUICK:-100000}
    OUT=${OUT_QUICK:-$ROOT/benches/RESULTS.quick.md}
fi
WARMUP=2
CLK_TCK=$(getconf CLK_TCK)
UP_PORT=18090 UP_DIRECT_PORT=18091 NGINX_PORT=18081 GW_PORT=18080 GW_METRICS=19464 BE_PORT=18082
GW_REDIS_PORT=18083 GW_REDIS_METRICS=19465
RUN=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
FEED_TOKEN=bench-feed-token-$(date +%s)
PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
trap 'cleanup; log "stopped everything; scratch files in $RUN"' EXIT
trap 'exit 130' INT TERM

stop() { # stop PID: one server we started
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" != "$1" ]] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------------
# Tools and binaries.

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    log "installing from Debian: ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if (($(nproc) < 2)); then
    log "warning: one core only; server and load generator will share it"
    LOAD_CPU=$SERVER_CPU
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release --quiet -p tollgate-gateway -p tollgate-backend \
        -p tollgate-benches --bins)
fi

# ---------------------------------------------------------------------------------------------
# Helpers.

cpu_ticks() { # utime+stime of a process (all its threads) and its direct children
    local total=0 p f
    for p in "$1" $(pgrep -P "$1" || true); do
        [[ -r /proc/$p/stat ]] || continue
        f=$(sed 's/^.*) //' "/proc/$p/stat")
        # after "pid (comm) ": state is field 1, utime field 12, stime field 13
        total=$((total + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$total"
}

core_busy() { # busy ticks of one core from /proc/stat (user+nice+system+irq+softirq+steal)
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

wait_http() { # wait_http URL [seconds]: until it answers 2xx
    local i
    for ((i = 0; i < ${2:-30} * 10; i++)); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    log "no answer from $1"
    return 1
}

to_ms() { # wrk latency text (e.g. 612.00us, 1.23ms, 1.01s) -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# Starters set LAST_PID (no command substitution: the server would hold its pipe open, and
# PIDS must be recorded in this shell so that cleanup finds every process).
nginx_start() { # nginx_start CONF PORT UPSTREAM CPU -> LAST_PID
    local conf=$RUN/nginx-$2.conf
    sed -e "s/__PORT__/$2/g" -e "s/__UPSTREAM__/$3/g" "$ROOT/benches/nginx/$1" >"$conf"
    mkdir -p "$RUN/nginx/tmp"
    taskset -c "$4" nginx -p "$RUN/nginx/" -e stderr -c "$conf" >/dev/null 2>>"$RUN/nginx-$2.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "http://127.0.0.1:$2/" 10 || { cat "$RUN/nginx-$2.log" >&2; exit 1; }
}

gateway_config() { # gateway_config MODE(remote|embedded) DATA_DIR [EXTRA_GATEWAY_LINES] -> path
    # (listens on $GW_PORT, metrics on $GW_METRICS)
    local f=$RUN/gateway-$1-$GW_PORT.toml
    cat >"$f" <<EOF
[gateway]
listen = "127.0.0.1:$GW_PORT"
metrics_listen = "127.0.0.1:$GW_METRICS"
data_dir = "$2"
workers = 1
${3:-}

[backend]
EOF
    if [[ $1 == remote ]]; then
        echo "mode = \"remote\"" >>"$f"
        echo "url = \"http://127.0.0.1:$BE_PORT\"" >>"$f"
    else
        echo "mode = \"embedded\"" >>"$f"
        echo "data_dir = \"$RUN/data\"" >>"$f"
    fi
    cat >>"$f" <<EOF

[[routes]]
name = "bench"
prefix = "/bench"
upstreams = ["http://127.0.0.1:$UP_PORT"]
auth = "key"
EOF
    echo "$f"
}

gateway_start() { # gateway_start CONFIG NAME -> LAST_PID, once /ready shows $KEYS keys
    TOLLGATE_BACKEND_FEED_TOKEN=$FEED_TOKEN RUST_LOG=${GW_LOG:-warn} \
        taskset -c "$SERVER_CPU" "$BIN/tollgate-gateway" --config "$1" \
        >"$RUN/$2.out" 2>"$RUN/$2.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    local i
    for ((i = 0; i < 600; i++)); do
        if [[ $(curl -s "http://127.0.0.1:$GW_PORT/ready" || true) == *'"keys_loaded":'"$KEYS"[,}]* ]]; then
            return 0
        fi
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "gateway $2 did not become ready with $KEYS keys"; cat "$RUN/$2.log" >&2
    return 1
}

ROWS=()
# One wrk run against a case; appends its figures to the case's lists (R_RPS etc., keyed by name).
declare -A R_RPS R_P50 R_P99 R_CPU R_BUSY R_ERRS R_PID
run_once() { # run_once NAME PID PORT PATH METHOD KEYED(0|1) RUN_NUMBER
    local name=$1 pid=$2 port=$3 path=$4 method=$5 keyed=$6 i=$7
    local url=http://127.0.0.1:$port$path
    local script=()
    if [[ $keyed == 1 ]]; then
        script=(-s "$ROOT/benches/keys.lua")
    elif [[ $method != GET ]]; then
        log "unkeyed $method not supported"; return 1
    fi
    export KEYS_FILE=$RUN/keys.txt BENCH_PATH=$path BENCH_METHOD=$method
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null
    local t0 b0 t1 b1 out
    t0=$(cpu_ticks "$pid"); b0=$(core_busy "$SERVER_CPU")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "$url")
    t1=$(cpu_ticks "$pid"); b1=$(core_busy "$SERVER_CPU")
    echo "$out" >"$RUN/wrk-${name// /_}-$i.txt"
    local reqs r l50 l99 non2xx cpu busy
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    l50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    l99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    cpu=$(awk -v t=$((t1 - t0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    # How busy the server's core was, against how much of that was the server itself.
    busy=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", (b > 0 ? 100 * (b - t) / b : 0)}')
    R_RPS[$name]+="$r "; R_P50[$name]+="$l50 "; R_P99[$name]+="$l99 "
    R_CPU[$name]+="$cpu "; R_BUSY[$name]+="$busy "
    R_ERRS[$name]=$((${R_ERRS[$name]:-0} + ${non2xx:-0})); R_PID[$name]=$pid
    log "$name run $i: $r req/s, p50 ${l50} ms, p99 ${l99} ms, $cpu µs CPU/req, other load on core $SERVER_CPU $busy %"
}

# The medians of a case's runs, as a row of the table (RSS of its server now).
summarize() { # summarize NAME
    local name=$1 pid=${R_PID[$1]} rss=""
    local med=()
    local list
    for list in "${R_RPS[$name]}" "${R_P50[$name]}" "${R_P99[$name]}" "${R_CPU[$name]}" "${R_BUSY[$name]}"; do
        med+=("$(tr ' ' '\n' <<<"$list" | grep . | median)")
    done
    [[ -r /proc/$pid/status ]] && rss=$(($(rss_kb "$pid") / 1024))
    ROWS+=("$name|${med[0]}|${med[1]}|${med[2]}|${med[3]}|${R_ERRS[$name]}|${med[4]}|$rss")
}

# measure_set SPEC...: each SPEC is "NAME|PID|PORT|PATH|METHOD|KEYED"; $RUNS rounds, each case
# once per round in the order given, then one row per case.
measure_set() {
    local i spec name pid port path method keyed
    for ((i = 1; i <= RUNS; i++)); do
        for spec in "$@"; do
            IFS='|' read -r name pid port path method keyed <<<"$spec"
            run_once "$name" "$pid" "$port" "$path" "$method" "$keyed" "$i"
        done
    done
    for spec in "$@"; do
        summarize "${spec%%|*}"
    done
}

measure() { measure_set "$1|$2|$3|$4|$5|$6"; } # measure NAME PID PORT PATH METHOD KEYED

row() { local IFS='|'; for r in "${ROWS[@]}"; do read -r n rest <<<"$r"; [[ $n == "$1" ]] && { echo "$r"; return; }; done; }
col() { row "$1" | cut -d'|' -f"$2"; }

# ---------------------------------------------------------------------------------------------
# Set-up: keys, upstream, backend.

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TOP_BEFORE=$(ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p | awk '{printf "%s %s%%; ", $2, $1}')
log "load average before: $LOAD_BEFORE (top: $TOP_BEFORE)"

log "minting $KEYS keys through the backend library"
"$BIN/seed_keys" --data-dir "$RUN/data" --count "$KEYS" --out "$RUN/keys.txt" 2>>"$RUN/seed.log"
tail -1 "$RUN/seed.log" >&2

nginx_start upstream.conf "$UP_PORT" - "$LOAD_CPU"; UPSTREAM=$LAST_PID
log "upstream nginx on core $LOAD_CPU (pid $UPSTREAM)"

# a: the upstream itself, as a server on the server core.
nginx_start upstream.conf "$UP_DIRECT_PORT" - "$SERVER_CPU"; pid=$LAST_PID
measure "a upstream (nginx return 200)" "$pid" "$UP_DIRECT_PORT" /bench/hello GET 0
stop "$pid"

# b, c, d, e: nginx as a reverse proxy, the gateway (remote backend on the load core, as in a
# fleet), its validate endpoint, and a second gateway in Redis quota mode, all up at once and
# measured interleaved.
nginx_start proxy.conf "$NGINX_PORT" "127.0.0.1:$UP_PORT" "$SERVER_CPU"; NGINX_PROXY=$LAST_PID
cat >"$RUN/backend.toml" <<EOF
[backend]
listen = "127.0.0.1:$BE_PORT"
data_dir = "$RUN/data"
EOF
TOLLGATE_BACKEND_FEED_TOKEN=$FEED_TOKEN RUST_LOG=warn taskset -c "$LOAD_CPU" \
    "$BIN/tollgate-backend" --config "$RUN/backend.toml" serve >"$RUN/backend.out" 2>"$RUN/backend.log" &
BACKEND=$!
PIDS+=("$BACKEND")
wait_http "http://127.0.0.1:$BE_PORT/health" 30
cfg=$(gateway_config remote "$RUN/gw-remote")
gateway_start "$cfg" gw-remote; GATEWAY=$LAST_PID
SET=("b nginx proxy_pass|$NGINX_PROXY|$NGINX_PORT|/bench/hello|GET|1"
    "c gateway (key + quota)|$GATEWAY|$GW_PORT|/bench/hello|GET|1"
    "d validate endpoint|$GATEWAY|$GW_PORT|/api/marketplace/keys/validate|POST|1")

# e: Redis quota mode, a second gateway. A private redis-server on the load core (as a fleet's
# Redis is another machine): the measured core holds only servers, as in c (the others idle).
REDIS_NOTE="" REDIS_PID="" REDIS_GATEWAY=""
REDIS_PORT=${REDIS_PORT:-16379}
if command -v redis-server >/dev/null 2>&1; then
    taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no >"$RUN/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    cfg=$(GW_PORT=$GW_REDIS_PORT GW_METRICS=$GW_REDIS_METRICS gateway_config remote "$RUN/gw-redis" \
        "redis_url = \"redis://127.0.0.1:$REDIS_PORT\"")
    if GW_PORT=$GW_REDIS_PORT gateway_start "$cfg" gw-redis 2>/dev/null; then
        REDIS_GATEWAY=$LAST_PID
        SET+=("e gateway + Redis quota|$REDIS_GATEWAY|$GW_REDIS_PORT|/bench/hello|GET|1")
    else
        REDIS_NOTE="not measured: the gateway did not start with \`redis_url\` (see $RUN/gw-redis.log)"
    fi
else
    REDIS_NOTE="not measured: redis-server is not installed (apt-get install redis-server)"
fi

measure_set "${SET[@]}"
THREADS=$(ls "/proc/$GATEWAY/task" | wc -l)
for p in $REDIS_GATEWAY $REDIS_PID $GATEWAY $NGINX_PROXY $BACKEND; do stop "$p"; done

# c': embedded backend (one process, the quick-start shape).
cfg=$(gateway_config embedded "$RUN/gw-embedded")
gateway_start "$cfg" gw-embedded; pid=$LAST_PID
measure "c' gateway, embedded backend" "$pid" "$GW_PORT" /bench/hello GET 1
stop "$pid"

# Placement: the upstream on the server's core instead.
if [[ $PLACEMENT == 1 ]]; then
    stop "$UPSTREAM"
    nginx_start upstream.conf "$UP_PORT" - "$SERVER_CPU"; UPSTREAM=$LAST_PID
    nginx_start proxy.conf "$NGINX_PORT" "127.0.0.1:$UP_PORT" "$SERVER_CPU"; pid=$LAST_PID
    measure "b0 nginx proxy_pass, upstream on core $SERVER_CPU" "$pid" "$NGINX_PORT" /bench/hello GET 1
    stop "$pid"
    TOLLGATE_BACKEND_FEED_TOKEN=$FEED_TOKEN RUST_LOG=warn taskset -c "$LOAD_CPU" \
        "$BIN/tollgate-backend" --config "$RUN/backend.toml" serve >>"$RUN/backend.out" 2>>"$RUN/backend.log" &
    BACKEND=$!
    PIDS+=("$BACKEND")
    wait_http "http://127.0.0.1:$BE_PORT/health" 30
    cfg=$(gateway_config remote "$RUN/gw-remote")
    gateway_start "$cfg" gw-remote-placement; pid=$LAST_PID
    measure "c0 gateway, upstream on core $SERVER_CPU" "$pid" "$GW_PORT" /bench/hello GET 1
    stop "$pid"
    stop "$BACKEND"
fi
stop "$UPSTREAM"

# ---------------------------------------------------------------------------------------------
# Memory: a gateway holding SNAPSHOT_KEYS keys from its snapshot (backend unreachable, so the
# replica is exactly the snapshot).

log "memory: writing a $SNAPSHOT_KEYS-key snapshot"
"$BIN/snapshot_keys" --count "$SNAPSHOT_KEYS" --out "$RUN/gw-mem/keys.snapshot" 2>>"$RUN/snapshot.log"
mkdir -p "$RUN/gw-mem0"
SNAP_MB=$(($(stat -c %s "$RUN/gw-mem/keys.snapshot") / 1048576))
mem_gateway() { # mem_gateway DATA_DIR NAME EXPECTED_KEYS -> MEM="rss_mb hwm_mb load_ms"
    local cfg=$RUN/gateway-$2.toml
    sed -e "s#^data_dir = .*#data_dir = \"$1\"#" -e "s#^url = .*#url = \"http://127.0.0.1:9\"#" \
        "$RUN/gateway-remote-$GW_PORT.toml" >"$cfg"
    local keys_saved=$KEYS
    KEYS=$3
    local pid
    gateway_start "$cfg" "$2"; pid=$LAST_PID
    KEYS=$keys_saved
    sleep 1
    local rss hwm ms
    rss=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
    ms=$(grep -o 'ms=[0-9]*' "$RUN/$2.log" | head -1 | cut -d= -f2 || true)
    stop "$pid"
    MEM="$rss $hwm ${ms:-0}"
}
mem_gateway "$RUN/gw-mem0" mem0 0
read -r RSS0 HWM0 _ <<<"$MEM"
# The load time is in the info-level "key snapshot loaded" line.
GW_LOG=info
mem_gateway "$RUN/gw-mem" mem1 "$SNAPSHOT_KEYS"
read -r RSS1 HWM1 LOAD_MS <<<"$MEM"
log "memory: $SNAPSHOT_KEYS keys: RSS $RSS1 MB (peak $HWM1 MB), loaded in $LOAD_MS ms; empty gateway $RSS0 MB"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# RESULTS.md

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b}'; }
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f", a - b}'; }
check() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0); print ok ? "met" : "**not met**"}'; }

G_RPS=$(col "c gateway (key + quota)" 2) N_RPS=$(col "b nginx proxy_pass" 2)
G_CPU=$(col "c gateway (key + quota)" 5) N_CPU=$(col "b nginx proxy_pass" 5)
G_P99=$(col "c gateway (key + quota)" 4) N_P99=$(col "b nginx proxy_pass" 4)
V_RPS=$(col "d validate endpoint" 2) V_P99=$(col "d validate endpoint" 4)
RPS_RATIO=$(ratio "$G_RPS" "$N_RPS") CPU_RATIO=$(ratio "$G_CPU" "$N_CPU") P99_DIFF=$(diff_ms "$G_P99" "$N_P99")

{
    echo "# tollgate load benchmark results"
    echo
    echo "Written by \`benches/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') (commit $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet -- gateway benches ':!benches/RESULTS*.md' || echo ', with uncommitted changes'))."
    echo "Command: \`$([[ ${QUICK:-0} == 1 ]] && echo 'QUICK=1 ')CARGO_TARGET_DIR=$CARGO_TARGET_DIR benches/run.sh\`"
    echo
    echo "Servers pinned to core $SERVER_CPU, wrk (1 thread, $CONNECTIONS connections) and the upstream nginx on core $LOAD_CPU."
    echo "$RUNS runs × ${DURATION} s per case after a ${WARMUP} s warm-up; each column is the median of the runs."
    echo "Keyed cases send a random key of $KEYS per request (\`benches/keys.lua\`), per-key limits 1e9 (never a 429)."
    echo
    echo "| case | req/s | p50 ms | p99 ms | server CPU µs/req | non-2xx | other load on core $SERVER_CPU % | RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r n a b c d e f g <<<"$r"
        printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$n" "$a" "$b" "$c" "$d" "$e" "$f" "${g:--}"
    done
    [[ -n $REDIS_NOTE ]] && echo "| e gateway + Redis quota | $REDIS_NOTE | | | | | | |"
    echo
    echo "## Gateway against nginx (c / b)"
    echo
    echo "| measure | gateway | nginx | ratio / difference | target | |"
    echo "|---|---:|---:|---:|---|---|"
    echo "| req/s | $(printf '%.0f' "$G_RPS") | $(printf '%.0f' "$N_RPS") | $RPS_RATIO | ≥ 0.90 | $(check "$RPS_RATIO" '>=' 0.9) |"
    echo "| CPU µs/request | $G_CPU | $N_CPU | $CPU_RATIO | ≤ 1.15 | $(check "$CPU_RATIO" '<=' 1.15) |"
    echo "| p99 ms | $G_P99 | $N_P99 | $P99_DIFF ms | ≤ +1 ms | $(check "$P99_DIFF" '<=' 1) |"
    echo "| validate req/s | $(printf '%.0f' "$V_RPS") | | | ≥ 35,000 | $(check "$V_RPS" '>=' 35000) |"
    echo "| validate p99 ms | $V_P99 | | | ≤ 5 | $(check "$V_P99" '<=' 5) |"
    echo
    if [[ -n $(row "e gateway + Redis quota") ]]; then
        R_RPS=$(col "e gateway + Redis quota" 2) R_CPU=$(col "e gateway + Redis quota" 5)
        R_RATIO=$(ratio "$R_RPS" "$G_RPS")
        echo "## Redis quota mode against local (e / c)"
        echo
        echo "| measure | Redis mode | local | ratio | target | |"
        echo "|---|---:|---:|---:|---|---|"
        echo "| req/s | $(printf '%.0f' "$R_RPS") | $(printf '%.0f' "$G_RPS") | $R_RATIO | ≥ 0.60 | $(check "$R_RATIO" '>=' 0.6) |"
        echo "| CPU µs/request | $R_CPU | $G_CPU | $(ratio "$R_CPU" "$G_CPU") | | |"
        echo
        echo "The Redis server (private, port $REDIS_PORT) runs on core $LOAD_CPU with wrk and the upstream."
        echo
    fi
    echo "## Memory"
    echo
    echo "| replica | RSS MB | peak RSS MB | snapshot load | target |"
    echo "|---|---:|---:|---:|---|"
    echo "| empty gateway | $RSS0 | $HWM0 | | |"
    echo "| $SNAPSHOT_KEYS keys (snapshot $SNAP_MB MB) | $RSS1 | $HWM1 | $LOAD_MS ms | ≤ 400 MB, ≤ 3 s: $(check "$RSS1" '<=' 400) / $(check "$LOAD_MS" '<=' 3000) |"
    echo
    echo "Gateway process: $THREADS threads with \`workers = 1\` (a current-thread tokio runtime serves every"
    echo "connection; the rest are idle helpers), all counted in the CPU column."
    echo
    echo "## Machine"
    echo
    echo "- CPU: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores; kernel $(uname -r)"
    echo "- $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(rustc --version)"
    echo "- load average before the run: $LOAD_BEFORE (busiest: $TOP_BEFORE); after: $LOAD_AFTER"
    echo "- \"other load on core $SERVER_CPU\": the share of the server core's busy time that was not the"
    echo "  measured server during the runs (other processes, interrupts); near 0 means a clean run."
    echo
    echo "Where the gateway's time goes (perf and callgrind profiles), what was changed and what"
    echo "remains: [PROFILE.md](PROFILE.md)."
} >"$OUT"
log "wrote $OUT"
cat "$OUT"
