"""Tests of scripts/setup_plan.py: which torchrec / fbgemm ``make setup`` pairs with a torch.

The pure functions are checked against fbgemm's compatibility table for every supported torch
and both builds; ``plan()`` against the stack installed in this very environment.
"""
from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup_plan.py"
spec = importlib.util.spec_from_file_location("setup_plan", SCRIPT)
setup_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_plan)


@pytest.mark.parametrize("torch_version, want", [
    ("2.11.0", "1.6"), ("2.11.0+cpu", "1.6"), ("2.12.1", "1.7"), ("2.13.0+cu126", "1.8"),
    ("2.13.0a0+git1234", "1.8"), ("2.14.0", "1.9"), ("2.10.2", None), ("2.15.0", None),
    ("3.13.0", None), ("nonsense", None),
])
def test_series_follows_fbgemms_table(torch_version, want):
    assert setup_plan.series(torch_version) == want


@pytest.mark.parametrize("torch_version, cuda, want", [
    # a CPU torch gets the CPU variant, whatever the machine has
    ("2.13.0+cpu", None, ("fbgemm-gpu-cpu==1.8.*", "", "fbgemm-gpu")),
    ("2.11.0", None, ("fbgemm-gpu-cpu==1.6.*", "", "fbgemm-gpu")),
    # PyTorch's cu126 / cu128 builds: fbgemm from the same index
    ("2.13.0+cu126", "12.6", ("fbgemm-gpu==1.8.*", "https://download.pytorch.org/whl/cu126",
                              "fbgemm-gpu-cpu")),
    ("2.12.0+cu128", "12.8", ("fbgemm-gpu==1.7.*", "https://download.pytorch.org/whl/cu128",
                              "fbgemm-gpu-cpu")),
    # PyPI's CUDA build reports +cu130 too: PyTorch's cu130 index (setup.sh falls back to PyPI)
    ("2.14.1+cu130", "13.0", ("fbgemm-gpu==1.9.*", "https://download.pytorch.org/whl/cu130",
                              "fbgemm-gpu-cpu")),
    # an unlabelled CUDA build (built from source): PyPI's fbgemm-gpu
    ("2.14.0", "13.0", ("fbgemm-gpu==1.9.*", "", "fbgemm-gpu-cpu")),
])
def test_fbgemm_variant_follows_the_torch_build(torch_version, cuda, want):
    assert setup_plan.fbgemm_requirement(torch_version, cuda) == want
    assert setup_plan.fbgemm_requirement(torch_version, cuda, cuda_usable=True) == want


@pytest.mark.parametrize("torch_version, cuda", [("2.14.1+cu130", "13.0"), ("2.13.0", "12.8")])
def test_cuda_torch_without_usable_cuda_gets_the_cpu_variant(torch_version, cuda):
    """The CUDA fbgemm cannot load without the NVIDIA driver; the CPU one loads against a
    CUDA torch (checked with 2.14.1+cu130 and fbgemm-gpu-cpu 1.9.0 on a machine without GPU)."""
    s = setup_plan.series(torch_version)
    assert setup_plan.fbgemm_requirement(torch_version, cuda, cuda_usable=False) == (
        f"fbgemm-gpu-cpu=={s}.*", "", "fbgemm-gpu")


def test_unsupported_torch_is_refused():
    with pytest.raises(ValueError, match="2.10.0"):
        setup_plan.fbgemm_requirement("2.10.0", None)


@pytest.mark.parametrize("version, requirement, want", [
    ("1.8.0", "torchrec==1.8.*", True), ("1.6.1", "torchrec==1.6.*", True),
    ("1.9.0", "torchrec==1.8.*", False), ("1.18.0", "torchrec==1.8.*", False),
    (None, "fbgemm-gpu-cpu==1.8.*", False),
])
def test_matches(version, requirement, want):
    assert setup_plan.matches(version, requirement) is want


def test_plan_of_this_environment_is_ready():
    """The suite runs in a set-up venv: its plan says nothing needs installing."""
    import torch

    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         check=True).stdout
    keys = {k: shlex.split(v)[0] if v else "" for k, v in
            (line.split("=", 1) for line in out.splitlines())}  # as the shell reads them
    assert keys["TORCH"] == "ok" and keys["READY"] == "1"
    usable = torch.version.cuda is not None and torch.cuda.is_available()
    assert keys["VARIANT"] == ("cuda" if usable else "cpu")
    assert (keys["NOTE"] == "") is (torch.version.cuda is None or usable)
    assert keys["TORCHREC"] == f"torchrec=={setup_plan.series(torch.__version__)}.*"
    fbgemm, index, other = setup_plan.fbgemm_requirement(torch.__version__, torch.version.cuda,
                                                         usable)
    assert (keys["FBGEMM"], keys["FBGEMM_INDEX"], keys["FBGEMM_OTHER"]) == (fbgemm, index, other)
