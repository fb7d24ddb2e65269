#!/usr/bin/env bash
# Create .venv and install the pinned stack. Idempotent: a stamp file records the hash of the
# inputs (this script, pyproject.toml) and the CUDA/CPU choice; nothing is reinstalled when they match.
#
# torch -> torchrec/fbgemm pairing (any other pairing fails to load):
#   2.11 -> 1.6.0, 2.12 -> 1.7.0, 2.13 -> 1.8.0, 2.14 -> 1.9.0
# torchrec declares fbgemm-gpu (the CUDA build) as a requirement, so it is installed with --no-deps
# plus its real requirements and the right fbgemm variant (fbgemm-gpu-cpu without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_DEFAULT=2.13.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  VARIANT=cuda
else
  VARIANT=cpu
fi

stamp_input() { cat scripts/setup.sh pyproject.toml; echo "$VARIANT"; }
HASH=$(stamp_input | sha256sum | cut -c1-16)
STAMP="$VENV/.setup-$HASH"
if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import torchrec, recsys_onpolicy" >/dev/null 2>&1; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# 1. torch: keep a usable one already in the venv, else install the default pin.
TORCH_VER=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ -z "$TORCH_VER" ]; then
  if [ "$VARIANT" = cpu ]; then
    # The CPU wheel: a local file on these machines, PyTorch's CPU index elsewhere.
    "${PIP[@]}" "torch==$TORCH_DEFAULT" || "${PIP[@]}" "torch==$TORCH_DEFAULT" --index-url https://download.pytorch.org/whl/cpu
  else
    "${PIP[@]}" "torch==$TORCH_DEFAULT"
  fi
  TORCH_VER=$TORCH_DEFAULT
fi

case "$TORCH_VER" in
  2.11.*) TR=1.6.0 ;;
  2.12.*) TR=1.7.0 ;;
  2.13.*) TR=1.8.0 ;;
  2.14.*) TR=1.9.0 ;;
  *) echo "setup: torch $TORCH_VER is not supported; torchrec/fbgemm exist for torch 2.11-2.14." \
          "Remove $VENV (or install torch==$TORCH_DEFAULT into it) and run 'make setup' again." >&2
     exit 1 ;;
esac
if [ "$VARIANT" = cuda ]; then FBGEMM="fbgemm-gpu==$TR"; else FBGEMM="fbgemm-gpu-cpu==$TR"; fi

# 2. torchrec without its declared deps, plus what it really needs and the matching fbgemm.
"${PIP[@]}" --no-deps "torchrec==$TR"
"${PIP[@]}" "$FBGEMM" tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath "torch==$TORCH_VER"

# 3. the project (editable) and its dev tools; torch is already satisfied, so nothing is upgraded.
"${PIP[@]}" -e ".[dev]" "torch==$TORCH_VER"

"$VENV/bin/python" -c "import torch, torchrec, fbgemm_gpu; print('setup ok: torch', torch.__version__, 'torchrec', torchrec.__version__ if hasattr(torchrec,'__version__') else '$TR', '($VARIANT)')"
rm -f "$VENV"/.setup-*
touch "$STAMP"
