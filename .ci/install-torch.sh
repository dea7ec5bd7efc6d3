#!/usr/bin/env bash
# Install Debian's CPU PyTorch and numpy for the reference checks (tools/reference).
# Idempotent: does nothing when /usr/bin/python3 already imports both.
# Debian 12: python3-torch 1.13.1 + python3-numpy 1.24, about 150 MB downloaded, 640 MB installed,
# ~2 minutes with apt-get update (177 packages with --no-install-recommends).
# Use /usr/bin/python3: a python3 earlier on PATH (pyenv, venv) does not see Debian's packages.
set -euo pipefail

PY=/usr/bin/python3
if [ -x "$PY" ] && "$PY" -c "import torch, numpy" 2>/dev/null; then
    echo "install-torch: already present: $("$PY" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)')"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends python3 python3-torch python3-numpy
"$PY" -c "import torch, numpy; print('install-torch: torch', torch.__version__, 'numpy', numpy.__version__)"
echo "install-torch: done in $(( $(date +%s) - start )) s"
