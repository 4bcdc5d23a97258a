#!/usr/bin/env bash
# Create .venv (or reuse it) with the pinned CPU stack; idempotent.
# torch / fbgemm-gpu / torchrec move together: change all three pins at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.lifelong-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check"
$PIP --upgrade pip wheel
$PIP torch==2.13.0
$PIP fbgemm-gpu-cpu==1.8.0
# torchrec's metadata names the CUDA fbgemm-gpu: install it without deps, then its real needs.
$PIP --no-deps torchrec==1.8.0
$PIP tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath
$PIP "ray[train,data,default]==2.60.0" pyarrow pandas pyyaml matplotlib pytest
$PIP --no-deps -e .
touch "$STAMP"
