#!/usr/bin/env bash
# Quick start 2/2: set up (venv, torch, build) and run the whole test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k bn_act
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
python -m gan_fast.cli info
exec python -m pytest tests -q -ra "$@"
