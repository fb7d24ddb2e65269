#!/usr/bin/env bash
# Create .venv and install the pinned stack. Idempotent: a stamp file records the hash of the
# inputs (these scripts, pyproject.toml); nothing is reinstalled while it matches and the
# installed torchrec / fbgemm still match the torch in the venv.
#
# torch -> torchrec/fbgemm series and the fbgemm variant: scripts/setup_plan.py (2.11 -> 1.6,
# 2.12 -> 1.7, 2.13 -> 1.8, 2.14 -> 1.9; fbgemm-gpu-cpu for a CPU torch or a CUDA torch that
# cannot use CUDA here, fbgemm-gpu from PyTorch's index for its CUDA version, else PyPI's).
# A torch already in the venv is kept; without one, torch 2.13.0 is installed: PyPI's CUDA
# build where `nvidia-smi -L` lists a GPU, else the CPU build (a local wheel where pip's
# configuration offers one, else PyTorch's CPU index).
# torchrec declares fbgemm-gpu (the CUDA build) as a requirement, so it is installed with
# --no-deps plus its real requirements and the matching fbgemm. pip's resolver then reports
# "torchrec ... requires fbgemm-gpu, which is not installed" with a CPU torch: expected,
# fbgemm-gpu-cpu provides the same package.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_DEFAULT=2.13.0
die() { echo "setup: $*" >&2; exit 1; }
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; }
plan() { "$VENV/bin/python" scripts/setup_plan.py; }
read_plan() {  # the plan's keys as shell variables (a Python killed by importing torch says so)
  local out status=0
  out=$(plan) || status=$?
  TORCH=
  eval "$out"
  [ -n "$TORCH" ] || die "importing torch in $VENV stopped Python (exit status $status): that" \
    "torch is broken. Remove $VENV and run 'make setup' again."
}

HASH=$(cat scripts/setup.sh scripts/setup_plan.py pyproject.toml | sha256sum | cut -c1-16)
STAMP="$VENV/.setup-$HASH"
if [ -f "$STAMP" ] && [ -x "$VENV/bin/python" ]; then
  READY=0
  eval "$(plan 2>/dev/null)" || true
  if [ "$READY" = 1 ] && "$VENV/bin/python" -c "import torchrec, fbgemm_gpu, recsys_onpolicy" >/dev/null 2>&1; then
    exit 0
  fi
fi

if [ -x "$VENV/bin/python" ]; then
  py_ok "$VENV/bin/python" || die "$VENV has $("$VENV/bin/python" -V 2>&1); Python 3.10 or later" \
    "is needed: remove $VENV and run 'make setup PYTHON=python3.X' (3.10 or later)"
else
  command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found: install Python 3.10 or later, or" \
    "run 'make setup PYTHON=/path/to/python3'"
  py_ok "$PY" || die "'$PY' is $("$PY" -V 2>&1); Python 3.10 or later is needed: run" \
    "'make setup PYTHON=python3.X' (3.10 or later)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# 1. torch: keep the one in the venv, else install the default pin.
read_plan
if [ "$TORCH" = missing ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch==$TORCH_DEFAULT"  # PyPI's CUDA build
  else
    # pip's own choice when it is a CPU build (a local wheel on these machines); PyPI's Linux
    # torch is the CUDA build (gigabytes of CUDA libraries), so else PyTorch's CPU index.
    pick=$("${PIP[@]}" --dry-run --no-deps --ignore-installed --report - "torch==$TORCH_DEFAULT" \
           2>/dev/null | "$VENV/bin/python" -c \
           'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' \
           2>/dev/null || true)
    if [[ "$pick" == *+cpu ]]; then
      "${PIP[@]}" "torch==$TORCH_DEFAULT"
    else
      "${PIP[@]}" "torch==$TORCH_DEFAULT" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  read_plan
fi
case "$TORCH" in
  ok) ;;
  broken) die "$ERROR. Remove $VENV and run 'make setup' again." ;;
  unsupported) die "$ERROR. Remove $VENV (or install torch==$TORCH_DEFAULT into it) and run" \
                   "'make setup' again." ;;
  *) die "torch $TORCH_DEFAULT could not be installed into $VENV (see pip's messages above)." ;;
esac

# 2. the matching fbgemm (the other variant removed first: both own the fbgemm_gpu package),
#    torchrec without its declared deps, and what torchrec really needs.
[ -z "$NOTE" ] || echo "setup: $NOTE" >&2
pip_fbgemm() {  # pip install "$@" from the fbgemm's index; PyPI's build where that index fails
  [ -n "$FBGEMM_INDEX" ] || { "${PIP[@]}" "$@"; return; }
  "${PIP[@]}" "$@" --index-url "$FBGEMM_INDEX" && return
  # PyPI's torch reports a +cuXXX version too, and PyPI's fbgemm-gpu is built like it; a
  # mismatch shows in the import check at the end.
  echo "setup: $FBGEMM not installed from $FBGEMM_INDEX (above); trying PyPI's build" >&2
  "${PIP[@]}" "$@"
}
fbgemm_failed() {
  die "$FBGEMM for torch $TORCH_VER could not be installed${FBGEMM_INDEX:+ from $FBGEMM_INDEX or}" \
    "from PyPI (see pip's messages above): check the network or pip's index settings."
}
if "$VENV/bin/python" -m pip show -q "$FBGEMM_OTHER" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall -y -q "$FBGEMM_OTHER"
  pip_fbgemm --no-deps --force-reinstall "$FBGEMM" || fbgemm_failed
fi
pip_fbgemm "$FBGEMM" "torch==$TORCH_BASE" || fbgemm_failed
"${PIP[@]}" --no-deps "$TORCHREC"
"${PIP[@]}" tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath "torch==$TORCH_BASE"

# 3. the project (editable) and its dev tools; torch is already satisfied, so nothing is upgraded.
"${PIP[@]}" -e ".[dev]" "torch==$TORCH_BASE"

read_plan
[ "$READY" = 1 ] || die "after installing, torchrec/fbgemm still do not match torch $TORCH_VER" \
  "($TORCHREC, $FBGEMM): remove $VENV and run 'make setup' again."
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, recsys_onpolicy" \
  || die "the stack does not import (above): remove $VENV and run 'make setup' again."
echo "setup ok: torch $TORCH_VER, $("$VENV/bin/python" -m pip list 2>/dev/null \
  | awk '$1 ~ /^(torchrec|fbgemm)/ {printf "%s %s, ", $1, $2}')$VARIANT"
rm -f "$VENV"/.setup-*
touch "$STAMP"
