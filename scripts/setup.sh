#!/usr/bin/env bash
# Create .venv (or reuse it) with the pinned stack; idempotent (a stamp records what was installed).
# torch / fbgemm-gpu / torchrec move together: change all three pins at once.
#   default:             CPU wheels (torch 2.13.0 CPU, fbgemm-gpu-cpu 1.8.0)
#   LIFELONG_VARIANT=cuda TORCH_INDEX=https://download.pytorch.org/whl/cuXXX  (CUDA torch + fbgemm-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
VARIANT=${LIFELONG_VARIANT:-cpu}
STAMP="$VENV/.lifelong-setup-$VARIANT-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
[ -f "$STAMP" ] && exit 0
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() {  # this workplace's pip config names local indexes that may be absent: hide that noise
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip wheel setuptools
case "$VARIANT" in
  cpu)  pip_install torch==2.13.0
        pip_install fbgemm-gpu-cpu==1.8.0 ;;
  cuda) pip_install torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
        pip_install fbgemm-gpu==1.8.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} ;;
  *) echo "unknown LIFELONG_VARIANT=$VARIANT (cpu|cuda)" >&2; exit 2 ;;
esac
# torchrec's metadata names the CUDA fbgemm-gpu: install it without deps, then its real needs.
pip_install --no-deps torchrec==1.8.0
pip_install tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath
pip_install "ray[train,data,default]==2.60.0" pyarrow pandas pyyaml matplotlib tensorboard pytest pytest-xdist
pip_install --no-deps -e .
touch "$STAMP"
