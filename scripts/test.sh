#!/usr/bin/env bash
# The mqttd test command (CI runs it through .ci/run):
#
#   bash scripts/test.sh [PYTEST ARGS...]
#
# 1. installs what is missing, and only that: the Debian packages the interop tests drive
#    (mosquitto, mosquitto-clients, chromium, redis-server: the tests start their own on free
#    ports), mqttd with its test extras (pip, editable), and
#    the JavaScript test clients (npm ci in tests/js/);
# 2. runs every test (slow and interop included) with `python3 -bb -m pytest`, then `ruff check .`,
#    then `mypy` (strict, over the files pyproject.toml's [tool.mypy] lists).
#
# Works on a clean Debian machine as root. If the system Python is "externally managed"
# (PEP 668, as on Debian 12), everything Python goes into ./.venv instead. Install steps are quiet;
# their output is shown only when they fail. Re-runs skip the installs when nothing is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES=(mosquitto mosquitto-clients chromium redis-server)

say() { printf '==> %s\n' "$*" >&2; }

# Run a command with its output captured; print the output only if the command fails.
quietly() {
    local out status=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || status=$?
    if ((status != 0)); then
        printf 'error: %s failed (exit %d):\n' "$*" "$status" >&2
        cat "$out" >&2
    fi
    rm -f "$out"
    return "$status"
}

as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        sudo "$@"
    fi
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_updated=0
apt_install() {
    if ((apt_updated == 0)); then
        say "apt-get update"
        quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        apt_updated=1
    fi
    say "apt-get install $*"
    quietly as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"
}

externally_managed() {
    "$PYTHON" - <<'EOF'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
EOF
}

# True when every requirement of pyproject.toml (runtime + the test extra) is installed at an
# acceptable version and `import mqttd` finds this checkout from any directory (editable install).
python_deps_ok() {
    "$PYTHON" - <<'EOF'
import importlib.metadata as md
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)
project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
for req in map(Requirement, project["dependencies"] + project["optional-dependencies"]["test"]):
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
# mqttd itself: importable from anywhere, and from this checkout (an editable install).
found = subprocess.run(
    [sys.executable, "-c", "import mqttd; print(mqttd.__file__)"],
    cwd="/", capture_output=True, text=True, check=False,
)
here = (Path.cwd() / "mqttd" / "__init__.py").resolve()
sys.exit(0 if found.returncode == 0 and Path(found.stdout.strip()).resolve() == here else 1)
EOF
}

# --- Debian packages -----------------------------------------------------------------------------
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    deb_installed "$pkg" || missing+=("$pkg")
done
if [[ -f tests/js/package.json ]] && ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
if ! command -v "$PYTHON" >/dev/null; then
    missing+=(python3)
fi
if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
fi

# --- Python: mqttd and its test extras -----------------------------------------------------------
if externally_managed; then
    if [[ ! -x .venv/bin/python ]]; then
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
        say "creating .venv (the system Python is externally managed)"
        quietly "$PYTHON" -m venv .venv
    fi
    PYTHON=$PWD/.venv/bin/python
    export PATH="$PWD/.venv/bin:$PATH"
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi
if ! python_deps_ok; then
    say "pip install -e '.[test]'"
    quietly "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore \
        -e '.[test]'
fi

# --- JavaScript test clients ---------------------------------------------------------------------
if [[ -f tests/js/package.json ]]; then
    stamp=tests/js/node_modules/.package-lock.json # npm writes it on every install
    lock=tests/js/package-lock.json
    if [[ ! -f $stamp || tests/js/package.json -nt $stamp || (-f $lock && $lock -nt $stamp) ]]; then
        if [[ -f $lock ]]; then
            say "npm ci (tests/js)"
            (cd tests/js && quietly npm ci --no-audit --no-fund --loglevel=error)
        else
            say "npm install (tests/js)"
            (cd tests/js && quietly npm install --no-audit --no-fund --loglevel=error)
        fi
    fi
fi

# --- Tests and lint ------------------------------------------------------------------------------
status=0
say "pytest"
"$PYTHON" -bb -m pytest "$@" || status=$?
say "ruff check ."
"$PYTHON" -m ruff check . || status=$?
say "mypy (strict; files from pyproject.toml)"
"$PYTHON" -m mypy || status=$?
exit "$status"
