#!/usr/bin/env bash
# The customer portal in a real browser: Debian's chromium driven by playwright-core (walk.mjs)
# against the real tollgate-gateway with its embedded backend, SEPA configured, on 127.0.0.1.
#
#   tests/browser/run.sh            (scripts/test.sh runs it after cargo test; so does .ci/run)
#
# Installs what is missing: chromium with apt-get (playwright's own browser download does not
# work here and is not used), playwright-core with npm ci (pinned in package-lock.json). Fails
# loudly when either cannot be installed. Screenshots of every page land in
# tests/browser/screenshots/ (gitignored); the gateway's log is printed when the walk fails.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  echo "browser test: installing Debian's chromium with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "FAILED: the browser test needs chromium and 'apt-get install chromium' failed" >&2
    exit 1
  fi
  if [ ! -x "$CHROMIUM" ]; then
    echo "FAILED: chromium was installed but $CHROMIUM is missing" >&2
    exit 1
  fi
fi

if [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
  echo "browser test: installing playwright-core with npm ci" >&2
  (cd "$HERE" && npm ci --no-audit --no-fund) || {
    echo "FAILED: npm ci (playwright-core) failed" >&2
    exit 1
  }
fi

(cd "$ROOT" && cargo build -p tollgate-gateway --bins)
GATEWAY="$TARGET/debug/tollgate-gateway"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-browser.XXXXXX")"
GW_PID=""
cleanup() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
data_dir = "$WORK/data"

[backend]
mode = "embedded"

[[routes]]
name = "demo"
prefix = "/demo"
upstream = "builtin:echo"
auth = "key"
TOML

TOKEN="browser-walk-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# A clean environment: no TOLLGATE_*, STRIPE_* or PAYPAL_* settings of the caller leak in, so
# Stripe and PayPal are unconfigured (their buttons must say "not available") and SEPA is set.
env -i PATH="$PATH" HOME="${HOME:-/tmp}" RUST_LOG=info \
  TOLLGATE_SERVICE_TOKEN="$TOKEN" \
  SEPA_HOLDER="Example SaaS GmbH" SEPA_IBAN="DE89370400440532013000" SEPA_BIC="COBADEFFXXX" \
  "$GATEWAY" --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!

# Wait for the gateway's "listening" line (a condition with a deadline).
URL=""
DEADLINE=$((SECONDS + 60))
while [ -z "$URL" ]; do
  URL="$(grep -o 'tollgate: gateway listening on http://[0-9.:]*' "$WORK/gateway.log" | head -n1 | sed 's/.* on //' || true)"
  if [ -n "$URL" ]; then break; fi
  if ! kill -0 "$GW_PID" 2>/dev/null || [ "$SECONDS" -ge "$DEADLINE" ]; then
    echo "FAILED: the gateway did not start; its log:" >&2
    cat "$WORK/gateway.log" >&2
    exit 1
  fi
  sleep 0.1 # poll interval of the condition above
done

rm -rf "$HERE/screenshots"
echo "browser test: walking the portal at $URL" >&2
if ! (cd "$HERE" && BASE_URL="$URL" SERVICE_TOKEN="$TOKEN" SCREENSHOT_DIR="$HERE/screenshots" CHROMIUM="$CHROMIUM" node walk.mjs); then
  echo "FAILED: browser walk; the gateway's log:" >&2
  cat "$WORK/gateway.log" >&2
  exit 1
fi
