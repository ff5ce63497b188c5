"""latency on the executorch backend: the candidate lowered to ExecuTorch's XNNPACK backend and
timed with ExecuTorch's own runtime (the released package, not a stand-in), with provenance;
a hybrid_unet SSM block lowers and computes what PyTorch computes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("executorch", reason="the executorch extra is not installed "
                    "(pip install 'nasframe[executorch]')")

from nasframe import Architecture, Candidate, Context, Integer, SearchSpace  # noqa: E402
from nasframe.errors import ConfigError  # noqa: E402
from nasframe_objectives.executorch_backend import PTE_SUFFIX, load_method, lower_to_pte  # noqa: E402
from nasframe_objectives.latency import Latency  # noqa: E402


class TinyConvSpace(SearchSpace):
    name = "tiny_conv_et"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1))


def test_executorch_latency_times_the_lowered_program(tmp_path):
    from importlib.metadata import version

    ctx = Context(run_dir=tmp_path, quiet=True)
    cand = Candidate(TinyConvSpace(), Architecture(width=8))
    obj = Latency(backend="executorch", options={"threads": 1, "warmup": 1, "repeats": 5})
    value, prov = obj(cand, ctx)
    assert value > 0
    assert prov.kind == "measured" and prov.backend == "executorch"
    assert prov.device.startswith("cpu (") and "1 threads" in prov.device
    d = prov.details
    assert d["runtime"] == f"executorch {version('executorch')} (XNNPACK)"
    assert d["threads"] == 1 and d["repeats"] == 5 and d["warmup"] == 1
    assert d["export_format"] == "pte" and d["export"]["format"] == "exported_program"
    assert d["pte_max_rel_error"] <= 1e-4 and d["export"]["max_rel_error"] <= 1e-4
    # convolutions and ReLU are XNNPACK's: nothing left on the portable kernels
    assert d["delegated_nodes"] > 0 and d["non_delegated_ops"] == {}
    assert 0 < d["p10_ms"] <= value <= d["p90_ms"]
    # the program is kept beside the cached export and not lowered again
    ptes = sorted((tmp_path / "cache" / "exports").glob(f"*{PTE_SUFFIX}"))
    assert len(ptes) == 1 and d["pte_bytes"] == ptes[0].stat().st_size
    meta = json.loads(Path(str(ptes[0]) + ".json").read_text())
    assert meta["graph_hash"] == d["export"]["graph_hash"]
    mtime = ptes[0].stat().st_mtime_ns
    obj(cand, ctx)
    assert ptes[0].stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_ssm_block_export_form_runs_in_executorch(tmp_path):
    from nasframe.deploy import export_module
    from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock

    torch.manual_seed(0)
    block = SSMBlock(16, d_state=4, headdim=8, orders=2, first_order=1, chunk=16).eval()
    x = torch.randn(1, 16, 12, 12)
    res = export_module(block, (x,), "exported_program", tmp_path / "block.pt2")
    summary = lower_to_pte(res.path, tmp_path / "block.pte")
    assert summary["delegated_nodes"] > 0
    with torch.no_grad():
        ref = block(x)
    out = load_method(tmp_path / "block.pte").execute([x])[0]
    assert (out - ref).abs().max() / ref.abs().max() < 1e-4


def test_executorch_options_are_checked():
    with pytest.raises(ConfigError, match=r"options.threads"):
        Latency(backend="executorch", options={"threads": 0})


def test_executorch_is_listed_as_a_latency_backend():
    from nasframe.plugins import get_plugins

    entry = get_plugins().latency_backends.entry("executorch")
    assert entry.missing() == []
