#!/usr/bin/env bash
# A/B of two gateway builds on one machine, interleaved round by round (a VM's drift hits both):
#
#   BASE=/path/to/old/release NEW=/path/to/new/release ROUNDS=8 SECS=6 benches/ab.sh
#
# One nginx `return 200` upstream and one backend (from NEW, 10 k keys) on core 1; the two
# gateways (remote mode, 1 worker) and an nginx proxy_pass on core 0; wrk on core 1 with a
# random key per request. Prints req/s and the server's user and system CPU per request.
# Ports 28080-28090; everything started is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${SECS:-8}; ROUNDS=${ROUNDS:-3}
NEW=${NEW:?release dir of the new build}; BASE=${BASE:?release dir of the old build}
RUN=$(mktemp -d /tmp/tollgate-ab.XXXX); mkdir -p $RUN/nginx/tmp
PIDS=()
trap 'kill ${PIDS[@]} 2>/dev/null; wait 2>/dev/null' EXIT
$NEW/seed_keys --data-dir $RUN/data --count 10000 --out $RUN/keys.txt 2>/dev/null
sed -e "s/__PORT__/28090/g" $ROOT/benches/nginx/upstream.conf > $RUN/up.conf
taskset -c 1 nginx -p $RUN/nginx/ -e stderr -c $RUN/up.conf >/dev/null 2>&1 & PIDS+=($!)
printf '[backend]\nlisten = "127.0.0.1:28082"\ndata_dir = "%s"\n' $RUN/data > $RUN/be.toml
TOLLGATE_BACKEND_FEED_TOKEN=abfeedtoken RUST_LOG=warn taskset -c 1 $NEW/tollgate-backend --config $RUN/be.toml serve > $RUN/be.log 2>&1 & PIDS+=($!)
for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:28082/health && break; sleep 0.1; done
start_gw() { # bin port mport
  cat > $RUN/gw-$2.toml <<T
[gateway]
listen = "127.0.0.1:$2"
metrics_listen = "127.0.0.1:$3"
data_dir = "$RUN/gw-$2"
workers = 1
[backend]
mode = "remote"
url = "http://127.0.0.1:28082"
[[routes]]
name = "bench"
prefix = "/bench"
upstreams = ["http://127.0.0.1:28090"]
auth = "key"
T
  TOLLGATE_BACKEND_FEED_TOKEN=abfeedtoken RUST_LOG=warn taskset -c 0 $1/tollgate-gateway --config $RUN/gw-$2.toml > $RUN/gw-$2.log 2>&1 &
  PIDS+=($!); LAST=$!
  for i in $(seq 300); do [[ $(curl -s http://127.0.0.1:$2/ready) == *'"keys_loaded":10000'* ]] && return; sleep 0.1; done
  echo "gateway $2 not ready"; cat $RUN/gw-$2.log; exit 1
}
sed -e "s/__PORT__/28085/g" -e "s/__UPSTREAM__/127.0.0.1:28090/g" $ROOT/benches/nginx/proxy.conf > $RUN/proxy.conf
taskset -c 0 nginx -p $RUN/nginx/ -e stderr -c $RUN/proxy.conf >/dev/null 2>&1 & PIDS+=($!); NP=$!
sleep 0.5
start_gw $BASE 28080 29464; GB=$LAST
start_gw $NEW 28081 29465; GN=$LAST
tick() { awk '{print $14, $15}' /proc/$1/stat; }
export KEYS_FILE=$RUN/keys.txt
one() { # label pid port path method
  export BENCH_PATH=$4 BENCH_METHOD=$5
  taskset -c 1 wrk -t1 -c64 -d2s -s $ROOT/benches/keys.lua http://127.0.0.1:$3$4 > /dev/null
  local t0u t0s t1u t1s
  read t0u t0s < <(tick $2)
  local out=$(taskset -c 1 wrk -t1 -c64 -d${SECS}s -s $ROOT/benches/keys.lua http://127.0.0.1:$3$4)
  read t1u t1s < <(tick $2)
  local n=$(awk '/requests in/ {print $1}' <<<"$out") r=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  awk -v l="$1" -v u=$((t1u-t0u)) -v s=$((t1s-t0s)) -v n=$n -v r=$r 'BEGIN {printf "%-12s %9.0f req/s user %6.2f sys %6.2f us/req\n", l, r, u*1e6/100/n, s*1e6/100/n}'
}
# The order alternates (ABBA): whichever gateway runs second in a round measured ~1 µs/request
# more in an A/A test of one binary against itself on this VM.
for r in $(seq $ROUNDS); do
  one "b nginx" $NP 28085 /bench/hello GET
  if ((r % 2)); then
    one "c base" $GB 28080 /bench/hello GET
    one "c new" $GN 28081 /bench/hello GET
  else
    one "c new" $GN 28081 /bench/hello GET
    one "c base" $GB 28080 /bench/hello GET
  fi
done
