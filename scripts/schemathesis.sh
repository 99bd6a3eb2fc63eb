#!/usr/bin/env bash
# schemathesis (PyPI, MIT) for the OpenAPI contract test (tests/tests/openapi_contract.rs): it
# reads the backend's /openapi.json and fuzzes every documented operation against a real
# tollgate-backend on 127.0.0.1. Installed into a private venv under the cargo target directory,
# run as a separate process by the test; never vendored.
#
#   scripts/schemathesis.sh install   # venv + pinned schemathesis; prints the binary's path
#   scripts/schemathesis.sh bin       # the venv's schemathesis (for SCHEMATHESIS_BIN)
#
# Under CI=true a failed install is an error; elsewhere it says SKIPPED and the contract test
# skips loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="4.32.5"
TARGET="${CARGO_TARGET_DIR:-target}"
VENV="$TARGET/schemathesis-venv"

bin_path() { echo "$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")/bin/schemathesis"; }

install() {
  if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('schemathesis') == '$VERSION'" 2>/dev/null; then
    bin_path
    return 0
  fi
  local py
  py="$(command -v python3 || true)"
  if [ -z "$py" ]; then
    echo "schemathesis: python3 not found" >&2
    return 1
  fi
  mkdir -p "$TARGET"
  "$py" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
  bin_path
}

case "${1:-install}" in
  install)
    if ! install; then
      if [ "${CI:-}" = "true" ]; then
        echo "ERROR: could not install schemathesis $VERSION (CI=true makes the OpenAPI contract test mandatory)" >&2
        exit 1
      fi
      echo "SKIPPED: schemathesis could not be installed; the OpenAPI contract test will skip" >&2
    fi
    ;;
  bin) bin_path ;;
  *) echo "usage: $0 install|bin" >&2; exit 2 ;;
esac
