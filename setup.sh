#!/usr/bin/env bash
# Create .venv and install wav2vec2 into it (editable). `./setup.sh --dev` adds the test tools
# (pytest, and transformers as the reference implementation the tests compare against).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
