"""What ``make setup`` installs next to the torch it finds: run by ``scripts/setup.sh`` with the
virtualenv's Python, it prints shell assignments (``KEY='value'`` lines) for the script to eval.

torch -> torchrec / fbgemm series (any other pairing fails to load; fbgemm's compatibility
table): 2.11 -> 1.6, 2.12 -> 1.7, 2.13 -> 1.8, 2.14 -> 1.9. Within a series the newest patch
release is taken (``torchrec==1.6.*``): torchrec 1.6.0 only has a Python 3.13 wheel, 1.6.1 has
3.10-3.14.

The fbgemm variant follows the torch build and whether it can use CUDA here:

- ``fbgemm-gpu-cpu`` for a CPU torch (also on a machine with a GPU: the CUDA fbgemm does not
  load against a CPU torch);
- ``fbgemm-gpu-cpu`` too for a CUDA torch that cannot use CUDA on this machine (no NVIDIA
  driver or GPU: the CUDA fbgemm then fails to load, it needs the driver's ``libnvidia-ml``;
  the CPU variant loads against a CUDA torch and runs on the CPU: checked with torch
  2.14.1+cu130, fbgemm-gpu-cpu 1.9.0 and torchrec 1.9.2 on a machine without a GPU);
- ``fbgemm-gpu`` for a CUDA torch with CUDA available, from PyTorch's index for its CUDA version
  (``+cu126`` -> ``download.pytorch.org/whl/cu126``); ``scripts/setup.sh`` falls back to PyPI's
  build when that index cannot be reached (PyPI's torch reports ``+cuXXX`` too, e.g.
  ``2.14.1+cu130``, and PyPI's fbgemm-gpu is built like it). An unlabelled CUDA torch (a source
  build) gets PyPI's.

Printed keys:

- ``TORCH``: ``missing`` (not installed), ``broken`` (installed but fails to import; ``ERROR``
  says why), ``unsupported`` (``ERROR`` names the version) or ``ok``;
- with ``ok``: ``TORCH_VER`` (as installed, e.g. ``2.13.0+cpu``), ``TORCH_BASE`` (``2.13.0``),
  ``TORCHREC`` and ``FBGEMM`` (pip requirements), ``FBGEMM_INDEX`` (an index URL or empty),
  ``FBGEMM_OTHER`` (the other variant's distribution name: uninstalled if present), ``VARIANT``
  (``cpu`` | ``cuda``), ``READY`` (1 when the installed torchrec / fbgemm already match and
  the other variant is absent) and ``NOTE`` (a line for the user, or empty).
"""
from __future__ import annotations

import importlib.metadata
import re
import shlex
import sys
import warnings

SERIES = {"2.11": "1.6", "2.12": "1.7", "2.13": "1.8", "2.14": "1.9"}
PYTORCH_INDEX = "https://download.pytorch.org/whl"


def series(torch_version: str) -> str | None:
    """The torchrec / fbgemm series ('1.8') of a torch version ('2.13.0+cpu'), or None."""
    m = re.match(r"(\d+)\.(\d+)", torch_version)
    return SERIES.get(f"{m.group(1)}.{m.group(2)}") if m else None


def fbgemm_requirement(torch_version: str, cuda: str | None,
                       cuda_usable: bool = True) -> tuple[str, str, str]:
    """(pip requirement, index URL or '', the other variant's name) of the fbgemm matching a
    supported torch ``torch_version`` built with CUDA ``cuda`` (``torch.version.cuda``; None
    for a CPU build) on a machine where it can (``cuda_usable``: ``torch.cuda.is_available()``)
    or cannot use CUDA."""
    s = series(torch_version)
    if s is None:
        raise ValueError(f"torch {torch_version} is not supported")
    if cuda is None or not cuda_usable:
        return f"fbgemm-gpu-cpu=={s}.*", "", "fbgemm-gpu"
    local = torch_version.partition("+")[2]
    index = f"{PYTORCH_INDEX}/{local}" if local.startswith("cu") else ""
    return f"fbgemm-gpu=={s}.*", index, "fbgemm-gpu-cpu"


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def matches(version: str | None, requirement: str) -> bool:
    """Whether an installed ``version`` satisfies ``name==X.Y.*``."""
    prefix = requirement.split("==", 1)[1].rstrip("*")
    return version is not None and version.startswith(prefix)


def plan() -> dict[str, str]:
    """The printed keys (module docstring) for the torch installed in this interpreter."""
    version = installed("torch")
    if version is None:
        return {"TORCH": "missing"}
    try:
        with warnings.catch_warnings():  # e.g. "Failed to initialize NumPy" before numpy is in
            warnings.simplefilter("ignore")
            import torch
    except Exception as e:  # noqa: BLE001 - any import failure means a broken install
        return {"TORCH": "broken", "ERROR": f"torch {version} is installed but does not import "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"}
    version = torch.__version__
    if series(version) is None:
        return {"TORCH": "unsupported", "ERROR": f"torch {version} is not supported; "
                f"torchrec/fbgemm exist for torch {min(SERIES)}-{max(SERIES)}"}
    cuda = torch.version.cuda
    usable = cuda is not None and torch.cuda.is_available()
    fbgemm, index, other = fbgemm_requirement(version, cuda, usable)
    note = "" if cuda is None or usable else (
        f"torch {version} is a CUDA build but cannot use CUDA here (no NVIDIA driver or GPU): "
        "the CPU fbgemm is installed and runs use the CPU")
    torchrec = f"torchrec=={series(version)}.*"
    fbgemm_dist = fbgemm.split("==")[0]
    ready = (matches(installed("torchrec"), torchrec)
             and matches(installed(fbgemm_dist), fbgemm) and installed(other) is None)
    return {"TORCH": "ok", "TORCH_VER": version, "TORCH_BASE": version.split("+")[0],
            "TORCHREC": torchrec, "FBGEMM": fbgemm, "FBGEMM_INDEX": index,
            "FBGEMM_OTHER": other, "VARIANT": "cuda" if usable else "cpu",
            "READY": "1" if ready else "0", "NOTE": note}


def main() -> None:
    for key, value in plan().items():
        print(f"{key}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main())
