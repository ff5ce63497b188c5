"""multitask_psnr and deploy_memory on the quad space (tiny preset); their contract tests are
generated in tests/test_conformance.py."""
from __future__ import annotations

import pytest
import torch

from nasframe.candidate import Candidate
from nasframe.capabilities import MultiTask, TrainedWeights
from nasframe.testing import plugin_context

pytest.importorskip("skimage")

from nasframe_objectives.multitask import DeployMemory, MultitaskPSNR  # noqa: E402
from nasframe_search_spaces.quad.space import QuadSpace  # noqa: E402


def small_space(**over):
    return QuadSpace(**{**QuadSpace.small_params, **over})


def test_deploy_memory_counts_one_graph_plus_adapters_against_separate_models(tmp_path):
    space = small_space(ranks=[0, 4], outside_rank=0)
    ctx = plugin_context(tmp_path)
    refs = space.reference_architectures()
    big = Candidate(space, refs["largest"], seed=0)       # rank 4, w8a16
    none = Candidate(space, refs["smallest"], seed=0)     # rank 0 everywhere, w4a16
    value, prov = DeployMemory()(big, ctx)
    d = prov.details
    assert prov.kind == "proxy" and d["tasks"] == 3
    assert value == pytest.approx(d["base_mb"] + 3 * d["adapter_mb"])
    assert d["separate_mb"] == pytest.approx(3 * d["base_mb"])
    assert d["ratio"] == pytest.approx(d["separate_mb"] / value)
    ten = DeployMemory(tasks=10)(big, ctx)[1].details
    assert ten["ratio"] > d["ratio"] > 1
    # no adapter at all: N tasks cost one model; 4-bit weights shrink the base
    _, p0 = DeployMemory()(none, ctx)
    assert p0.details["adapter_mb"] < 1e-4 and p0.details["ratio"] == pytest.approx(3, rel=1e-3)
    assert p0.details["base_mb"] < d["base_mb"]
    assert DeployMemory(report="ratio")(big, ctx)[0] == pytest.approx(d["ratio"])


def test_multitask_psnr_reports_every_task_and_reduces_to_the_worst(tmp_path):
    torch.set_num_threads(1)
    space = small_space()
    ctx = plugin_context(tmp_path)
    space.prepare(ctx, frozenset({TrainedWeights, MultiTask}))
    cand = Candidate(space, space.reference_architectures()["largest"], seed=0)
    value, prov = MultitaskPSNR()(cand, ctx)
    per = prov.details["per_task"]
    assert set(per) == {"denoise", "deblur", "derain"}
    assert value == pytest.approx(min(per.values()), abs=1e-3)
    mean, _ = MultitaskPSNR(reduce="mean")(cand, ctx)
    assert mean == pytest.approx(sum(per.values()) / 3, abs=1e-3)
    fp32, _ = MultitaskPSNR(method="fp32")(cand, ctx)
    assert abs(fp32 - value) < 3.0     # quantised close to full precision


def test_multitask_psnr_rejects_a_method_the_space_lacks():
    from nasframe.errors import InvalidParams

    with pytest.raises(InvalidParams, match="method"):
        MultitaskPSNR(method="bogus")
