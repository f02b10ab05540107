#!/usr/bin/env bash
# VNN-COMP contract: install_tool.sh VERSION -- creates the .venv with nncert (see tasks.sh).
set -euo pipefail
bash "$(cd "$(dirname "$0")/.." && pwd)/tasks.sh" install
