#!/usr/bin/env bash
# Creates or updates the two virtual environments; idempotent and quiet when nothing changed.
#   .venv       main environment (torch CPU, nir, norse, onnx, ...), with this project installed editable
#   .venv-lava  Lava environment (lava-nc 0.10.0 + lava-dl 0.6.0 with their numpy<2 pins)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# pip's output goes to a log that is shown only when a step fails.
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
quiet_pip() {
  if ! "$@" >"$LOG" 2>&1; then
    grep -v "^WARNING: Location 'file://" "$LOG" >&2
    echo "setup: failed: $*" >&2
    return 1
  fi
}

stamp_of() { cat "$@" pyproject.toml tools/setup.sh | sha256sum | cut -d' ' -f1; echo "$($PYTHON --version 2>&1)"; }

ensure_env() {  # name, then requirement files
  local env=$1; shift
  local want; want=$(stamp_of "$@")
  if [ -f "$env/.sbnn-stamp" ] && [ "$(cat "$env/.sbnn-stamp")" = "$want" ]; then return 0; fi
  echo "setup: building $env (one-off, about a minute)"
  [ -x "$env/bin/python" ] || "$PYTHON" -m venv "$env"
  quiet_pip "$env/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  return 1
}

# Headless Chromium (Debian's package) renders report.html in the report test.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the report test (one-off)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing and cannot be installed without root; the report test will be skipped" >&2
  fi
fi

if ! ensure_env .venv requirements/main.txt requirements/main-nodeps.txt; then
  quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/main.txt
  quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/main-nodeps.txt
  quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  stamp_of requirements/main.txt requirements/main-nodeps.txt > .venv/.sbnn-stamp
fi

if ! ensure_env .venv-lava requirements/lava.txt requirements/lava-nodeps.txt; then
  quiet_pip .venv-lava/bin/python -m pip install -q --disable-pip-version-check -r requirements/lava.txt
  # lava-nc and lava-dl declare Python <3.11; our import fix (hw_sim/lava_compat.py) makes them run on 3.11.
  quiet_pip .venv-lava/bin/python -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python -r requirements/lava-nodeps.txt
  stamp_of requirements/lava.txt requirements/lava-nodeps.txt > .venv-lava/.sbnn-stamp
fi
