#!/usr/bin/env bash
# The whole test suite: unit, integration, storage and quota conformance, end-to-end.
#
#   ./scripts/test.sh
#
# PostgreSQL and Redis suites run when TOLLGATE_TEST_POSTGRES_URL / TOLLGATE_TEST_REDIS_URL are
# set and say SKIPPED loudly when not. Under CI=true they are mandatory: the URLs default to the
# local services (127.0.0.1:5432 database `test`, 127.0.0.1:6379) and a test fails if it cannot
# connect.
set -euo pipefail
cd "$(dirname "$0")/.."

# Style and lints first: rustfmt's layout, and clippy with every warning an error (this is what
# enforces the workspace lints such as `unwrap_used = "deny"`). A failure stops the run here.
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

# The backend's test clock (an endpoint that moves time) is for the tests only: a plain
# `cargo build` / `cargo run` (the workspace's default members) must not turn it on.
backend_features="$(cargo tree -e normal,build,features -i tollgate-backend)"
if grep -q 'feature "test-clock"' <<<"$backend_features"; then
  echo 'error: a plain `cargo build` enables tollgate-backend'"'"'s test-clock feature (see default-members in Cargo.toml)' >&2
  exit 1
fi

if [ "${CI:-}" = "true" ]; then
  export TOLLGATE_TEST_POSTGRES_URL="${TOLLGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
  export TOLLGATE_TEST_REDIS_URL="${TOLLGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
  scripts/services.sh ensure
fi

for v in TOLLGATE_TEST_POSTGRES_URL TOLLGATE_TEST_REDIS_URL; do
  if [ -z "${!v:-}" ]; then
    echo "NOTE: $v is not set: the suites that need it will print SKIPPED (CI=true makes them mandatory)." >&2
  fi
done

# Stripe end-to-end tests start localstripe (PyPI, GPL: a separate process, never vendored) from
# a venv under the target directory, one fresh instance per test on 127.0.0.1. Mandatory in CI.
if LOCALSTRIPE_PY="$(scripts/localstripe.sh install)" && [ -n "$LOCALSTRIPE_PY" ]; then
  export LOCALSTRIPE_PYTHON="$LOCALSTRIPE_PY"
fi

# The OpenAPI contract test runs schemathesis (PyPI) against the real backend, from a venv under
# the target directory. Mandatory in CI, SKIPPED (loudly) elsewhere when it cannot be installed.
if SCHEMATHESIS="$(scripts/schemathesis.sh install)" && [ -n "$SCHEMATHESIS" ]; then
  export SCHEMATHESIS_BIN="$SCHEMATHESIS"
fi

# The end-to-end tests start the real binaries from the same target directory.
cargo build --workspace --bins
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$results"

# The customer portal in a real browser (Debian's chromium + playwright-core, installed by the
# script when missing; it fails loudly when they cannot be installed).
tests/browser/run.sh

# One closing line for the whole run: every cargo test binary's counts plus the browser walk.
awk '/^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tollgate: %d passed, %d failed\n", p + 1, f }' "$results"
