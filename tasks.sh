#!/usr/bin/env bash
# Set-up and everyday tasks; each creates/updates the local .venv first.
#   bash tasks.sh demo    install, then certify the bundled model on the bundled samples (box, deeppoly, mnbab)
#   bash tasks.sh test    install, then run the test suite (the slow checks are opt-in: bash tasks.sh test -m slow)
#   bash tasks.sh lint    ruff
#   bash tasks.sh install only create/update .venv
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# torch from PyPI; override e.g. TORCH_SPEC="torch torchvision" or a CPU wheel index via PIP_INDEX_URL
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

install() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    local stamp=".venv/.nncert-installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        # shellcheck disable=SC2086
        .venv/bin/python -m pip install --quiet $TORCH_SPEC
        .venv/bin/python -m pip install --quiet -e ".[dev]"
        rm -f .venv/.nncert-installed-*
        touch "$stamp"
    fi
}

shared_data() {
    # $NNCERT_DATA / $NNCERT_BENCHMARKS, else the development copies in ../shared beside the repository, if any
    local dir=../shared
    if [ -d "$dir/data" ] && [ -z "${NNCERT_DATA:-}" ]; then export NNCERT_DATA="$(cd "$dir/data" && pwd)"; fi
    if [ -d "$dir/benchmarks" ] && [ -z "${NNCERT_BENCHMARKS:-}" ]; then
        export NNCERT_BENCHMARKS="$(cd "$dir/benchmarks" && pwd)"
    fi
}

task=${1:-demo}
shift || true
case "$task" in
    demo) install; .venv/bin/certify "$@" ;;
    test) install; shared_data; .venv/bin/python -m pytest -n 2 -m "not slow" "$@" ;;
    lint) install; .venv/bin/ruff check . ;;
    install) install ;;
    *) echo "usage: bash tasks.sh demo|test|lint|install [args...]" >&2; exit 2 ;;
esac
