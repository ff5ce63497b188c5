"""Surrogate blocks: a per-pair decision beside full / resnet / removed, distilled and cached per pair."""
from __future__ import annotations

import pytest
import torch

from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.capabilities import BlockAlignment, Teacher
from nasframe.context import Context
from nasframe_objectives.cost import Params
from nasframe_objectives.fidelity import Fidelity
from nasframe_search_spaces.sd_unet.network import SurrogateBlock
from nasframe_search_spaces.sd_unet.space import SDUNetSpace


def _space(**over):
    p = {"preset": "tiny", "latent_size": 8, "pairs": ["full", "resnet", "surrogate", "removed"],
         "mid": "keep", "innermost": "keep", "surrogate_steps": 6,
         "fidelity": {"samples": 2, "batch_size": 2}}
    p.update(over)
    return SDUNetSpace(p)


def _arch(space, **values):
    base = {d.name: "full" for d in space.decisions()}
    return Architecture({**base, **values})


def test_surrogate_is_a_choice_only_when_listed():
    assert "surrogate" not in SDUNetSpace({"preset": "tiny"}).decisions()[0].choices
    space = _space()
    assert "surrogate" in {c for d in space.decisions() for c in d.choices}
    assert space.validate(_arch(space, down0_1="surrogate", up3_2="surrogate")) is None


def test_surrogate_pairs_are_smaller_and_distilled_once(tmp_path):
    space = _space()
    ctx = Context(tmp_path, quiet=True)
    space.prepare(ctx, frozenset({Teacher, BlockAlignment}))
    full, sur = _arch(space), _arch(space, down1_1="surrogate", up2_0="surrogate")
    model = space.build(sur)
    assert isinstance(model.get_submodule("down.1.pairs.1.surrogate"), SurrogateBlock)
    count = Params()
    assert count.evaluate(Candidate(space, sur), ctx).value < count.evaluate(Candidate(space, full), ctx).value
    # the surrogate starts from a fixed seed: the same init every build (its cache key stays valid)
    again = space.build(sur)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    obj = Fidelity({"distill": {"steps": 2, "batch_size": 2}})
    obj.prepare(space, ctx)
    v = obj.evaluate(Candidate(space, sur), ctx)
    assert v.details["distill"]["trained"] == 2 and v.value < 100
    rel = space.align(space.build(sur), sur, ctx, steps=2, batch_size=2, seed=0)
    assert rel["cached"] == 2 and rel["trained"] == 0
    files = list((tmp_path / "cache" / "sd_unet" / "pairs").glob("*.result.json"))
    assert len(files) == 2 and all('"steps": 6' in f.read_text() for f in files)
    # distillation helped: the surrogate got closer to its teacher pair
    assert all(rel["relative_mse"][n] < rel["relative_mse_before"][n] for n in rel["relative_mse"])


def test_graph_labels_surrogates():
    space = _space()
    g = space.graph(_arch(space, down0_0="surrogate"))
    assert g.nodes["down0_0.surrogate"]["kind"] == "surrogate"
