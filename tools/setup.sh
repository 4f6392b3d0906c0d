#!/usr/bin/env bash
# Creates or updates the two virtual environments; idempotent and quiet when nothing changed.
#   .venv       main environment (torch CPU, nir, norse, onnx, ...), with this project installed editable
#   .venv-lava  Lava environment (lava-nc 0.10.0 + lava-dl 0.6.0 with their numpy<2 pins)
# Packages are installed with uv (installed into .venv by pip), which resolves pip's own settings (find-links,
# indexes, constraints) in seconds and hardlinks one copy of each wheel (torch included) from its cache into
# both environments. Where uv cannot be installed, or SBNN_INSTALLER=pip, pip does the same, more slowly.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
INSTALLER=${SBNN_INSTALLER:-uv}

# Installer output goes to a log that is shown only when a step fails.
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
quiet() {
  if ! "$@" >"$LOG" 2>&1; then
    grep -v "^WARNING: Location 'file://" "$LOG" >&2
    echo "setup: failed: $*" >&2
    return 1
  fi
}

stamp_of() { cat "$@" pyproject.toml tools/setup.sh | sha256sum | cut -d' ' -f1; echo "$($PYTHON --version 2>&1)"; }

needs_build() {  # env, then requirement files: true (0) when the env is missing or out of date
  local env=$1; shift
  [ -f "$env/.sbnn-stamp" ] && [ "$(cat "$env/.sbnn-stamp")" = "$(stamp_of "$@")" ] && return 1
  echo "setup: building $env (one-off)"
  [ -x "$env/bin/python" ] || "$PYTHON" -m venv "$env"
  return 0
}

# pip's settings on this machine (pip.conf, PIP_* variables), handed to uv as the same options.
uv_options() {
  .venv/bin/python - <<'PY'
import re, subprocess, sys
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
flags = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "constraint": "--constraint"}
options = ["--index-strategy", "unsafe-best-match"]      # pip considers every index; so does this
seen = set()
for line in listing.splitlines():
    match = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line)
    if match and match.group(1) in flags:
        for value in match.group(2).split():
            if (match.group(1), value) not in seen:
                seen.add((match.group(1), value))
                options += [flags[match.group(1)], value]
print("\n".join(options))
PY
}

install() {  # env, then pip install arguments
  local env=$1; shift
  if [ "$INSTALLER" = uv ]; then
    quiet .venv/bin/uv pip install --python "$env/bin/python" "${UV_OPTIONS[@]}" "$@"
  else
    quiet "$env/bin/python" -m pip install -q --disable-pip-version-check "$@"
  fi
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

MAIN_REQUIREMENTS=(requirements/main.txt requirements/main-nodeps.txt)
LAVA_REQUIREMENTS=(requirements/lava.txt requirements/lava-nodeps.txt)
BUILD_MAIN=0; BUILD_LAVA=0
needs_build .venv "${MAIN_REQUIREMENTS[@]}" && BUILD_MAIN=1
needs_build .venv-lava "${LAVA_REQUIREMENTS[@]}" && BUILD_LAVA=1
if [ $BUILD_MAIN = 1 ] || [ $BUILD_LAVA = 1 ]; then
  if [ "$INSTALLER" = uv ] && ! [ -x .venv/bin/uv ] && ! .venv/bin/python -m pip install -q --disable-pip-version-check uv >"$LOG" 2>&1; then
    echo "setup: uv could not be installed; installing with pip (slower)" >&2
    INSTALLER=pip
  fi
  [ "$INSTALLER" = uv ] && mapfile -t UV_OPTIONS < <(uv_options)
fi

if [ $BUILD_MAIN = 1 ]; then
  install .venv -r requirements/main.txt
  install .venv --no-deps -r requirements/main-nodeps.txt
  install .venv --no-deps --no-build-isolation -e .
  stamp_of "${MAIN_REQUIREMENTS[@]}" > .venv/.sbnn-stamp
fi

if [ $BUILD_LAVA = 1 ]; then
  install .venv-lava -r requirements/lava.txt
  # lava-nc and lava-dl declare Python <3.11; our import fix (hw_sim/lava_compat.py) makes them run on 3.11.
  if [ "$INSTALLER" = uv ]; then
    install .venv-lava --no-deps -r requirements/lava-nodeps.txt
  else
    install .venv-lava --no-deps --ignore-requires-python -r requirements/lava-nodeps.txt
  fi
  stamp_of "${LAVA_REQUIREMENTS[@]}" > .venv-lava/.sbnn-stamp
fi
