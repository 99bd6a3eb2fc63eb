#!/usr/bin/env bash
# localstripe (PyPI, GPL-3.0) for the Stripe end-to-end tests. It is installed into a private
# venv under the cargo target directory and run as a separate process by the tests themselves
# (tests/src/stripe.rs starts one per test, bound to 127.0.0.1 with empty in-memory state);
# its code is never vendored into this repository.
#
#   scripts/localstripe.sh install   # venv + pinned localstripe; prints the python path
#   scripts/localstripe.sh python    # the venv's python (for LOCALSTRIPE_PYTHON)
#
# Under CI=true a failed install is an error; elsewhere it says SKIPPED and the Stripe
# end-to-end tests that need localstripe skip loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="1.15.10"
TARGET="${CARGO_TARGET_DIR:-target}"
VENV="$TARGET/localstripe-venv"

python_path() { echo "$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")/bin/python"; }

install() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import localstripe, importlib.metadata as m; assert m.version('localstripe') == '$VERSION'" 2>/dev/null; then
    python_path
    return 0
  fi
  local py
  py="$(command -v python3 || true)"
  if [ -z "$py" ]; then
    echo "localstripe: python3 not found" >&2
    return 1
  fi
  mkdir -p "$TARGET"
  "$py" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "localstripe==$VERSION" >&2
  python_path
}

case "${1:-install}" in
  install)
    if ! install; then
      if [ "${CI:-}" = "true" ]; then
        echo "ERROR: could not install localstripe $VERSION (CI=true makes the Stripe e2e tests mandatory)" >&2
        exit 1
      fi
      echo "SKIPPED: localstripe could not be installed; the Stripe e2e tests that need it will skip" >&2
    fi
    ;;
  python) python_path ;;
  *) echo "usage: $0 install|python" >&2; exit 2 ;;
esac
