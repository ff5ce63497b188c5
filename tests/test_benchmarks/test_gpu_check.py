"""benchmarks/gpu_check.sh on a machine without a GPU: its CPU fallback (the CUDA column
needs a CUDA machine; there the same script prints it beside the CPU's)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_unknown_argument_exits_2():
    res = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown argument '--fast'" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a CPU-only machine")
def test_cpu_fallback_says_so_and_reports_the_cpu_column(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["bash", str(SCRIPT), "--quick"], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    assert "no CUDA GPU visible to torch" in out and "CPU fallback" in out
    ens = out[out.index("ENS small example"):out.index("SSM block")]
    assert "cpu" in ens and "cuda" not in ens.split("\n", 2)[2]   # the CPU row only
    assert "chunked" in out and "auto on this machine: chunked" in out
    assert (tmp_path / "ens_cpu" / "alignment.json").is_file() and (tmp_path / "ssm.json").is_file()
