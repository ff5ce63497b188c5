"""sd_unet: the assembled U-Net against diffusers, validity, references, surgery, fidelity."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasframe import capabilities
from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.capabilities import BlockAlignment, Teacher
from nasframe.context import Context
from nasframe.errors import ConfigError
from nasframe_objectives.cost import GMACs, Params
from nasframe_objectives.fidelity import Fidelity
from nasframe_search_spaces.sd_unet.network import (
    PRESETS,
    SDUNet,
    UNetConfig,
    UNetPlan,
    from_diffusers_keys,
    to_diffusers_keys,
)
from nasframe_search_spaces.sd_unet.space import SDUNetSpace
from nasframe_search_spaces.sd_unet.surgery import level_indices

TINY = PRESETS["tiny"]


def _inputs(batch=2, side=16, cfg=TINY, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cfg.in_channels, side, side, generator=g),
            torch.tensor([10, 700][:batch]),
            torch.randn(batch, 8, cfg.cross_attention_dim, generator=g))


@pytest.fixture(scope="module")
def diffusers_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY.to_diffusers()).eval()


@pytest.fixture()
def ctx(tmp_path):
    return Context(tmp_path, quiet=True)


# ------------------------------------------------------------------ the network
def test_full_plan_computes_exactly_what_diffusers_computes(diffusers_unet):
    ours = SDUNet(UNetPlan.teacher(TINY)).eval()
    state = from_diffusers_keys(diffusers_unet.state_dict())
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(ours(*x), diffusers_unet(*x).sample)
    assert set(to_diffusers_keys(ours.state_dict())) == set(diffusers_unet.state_dict())


def test_reference_parameter_counts_on_the_sd15_preset():
    space = SDUNetSpace(preset="sd15")
    refs = space.reference_architectures()
    counts = {}
    with torch.device("meta"):
        for name, arch in refs.items():
            counts[name] = sum(p.numel() for p in space.build(arch).parameters())
    # SD 1.5 (docs/sd.md) and BK-SDM's configurations as diffusers builds them
    assert counts["sd15"] == 859_520_964
    assert counts["bk_sdm_base"] == 579_384_964
    assert counts["bk_sdm_small"] == 482_346_884
    assert counts["bk_sdm_tiny"] == 323_384_964
    assert counts["nanosd"] < counts["sd15"]


def test_bk_sdm_base_matches_diffusers_layers_per_block_1():
    """BK-SDM Base keeps the first down pair and drops the middle up pair: the
    same tensors (by shape) as diffusers' layers_per_block=1 U-Net."""
    from diffusers import UNet2DConditionModel

    space = SDUNetSpace(preset="tiny")
    ours = space.build(space.reference_architectures()["bk_sdm_base"])
    theirs = UNet2DConditionModel(**{**TINY.to_diffusers(), "layers_per_block": 1})
    assert (sum(p.numel() for p in ours.parameters())
            == sum(p.numel() for p in theirs.parameters()))


# ------------------------------------------------------------------ decisions and validity
def test_nanosd_space_has_4x4x4x8x8x8_variants():
    space = SDUNetSpace(preset="tiny", pairs=["full", "resnet"], mid="remove", innermost="remove")
    assert space.size == 4 * 4 * 4 * 8 * 8 * 8
    assert sum(1 for _ in space.enumerate()) == 32_768
    assert list(space.reference_architectures()) == ["nanosd"]


@pytest.mark.parametrize("change, words", [
    ({"down1_0": "removed"}, "down1_0"),
    ({"down1_1": "removed"}, "must keep exactly 2"),
    ({"down1_1": "removed", "up2_0": "removed"}, "keep up2_0"),
    ({"down2_1": "removed", "up1_2": "removed"}, "last pair"),
])
def test_inconsistent_architectures_are_rejected_with_the_reason(change, words):
    space = SDUNetSpace(preset="tiny")
    arch = Architecture({**space.reference_architectures()["sd15"], **change})
    reason = space.validate(arch)
    assert reason is not None and words in reason
    with pytest.raises(ValueError, match=words.split()[0]):
        space.build(arch)


def test_samples_are_valid_and_canonical():
    space = SDUNetSpace(preset="tiny", widths=[1.0, 0.5])
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(100)]
    assert all(space.validate(a) is None for a in archs)
    assert all(space.canonicalize(a) == a for a in archs)
    assert len({a.id for a in archs}) > 90
    # removals happen: the sampler does not only find the teacher
    assert any("removed" in a.values() for a in archs)
    for a in archs[:5]:
        with torch.no_grad():
            out = space.build(a)(*space.example_inputs(a, batch_size=1))
        assert out.shape == (1, 4, 16, 16)


def test_canonical_form_resets_what_a_removed_innermost_level_makes_irrelevant():
    space = SDUNetSpace(preset="tiny", widths=[1.0, 0.5])
    base = dict(space.reference_architectures()["bk_sdm_tiny"])
    a = Architecture({**base, "down3_1": "full", "width2": 0.5})
    b = Architecture({**base, "width2": 0.5})
    assert space.canonicalize(a) == space.canonicalize(b)


@pytest.mark.parametrize("params, words", [
    ({"preset": "sd14"}, "preset"),
    ({"pairs": ["resnet"]}, "full"),
    ({"widths": [1.5]}, "widths"),
    ({"mid": "drop"}, "mid"),
    ({"teacher": {"path": "/nonexistent/sd"}}, "teacher.path"),
    ({"teacher": {"seeed": 1}}, "did you mean 'seed'"),
    ({"latent_size": 12}, "multiple of 8"),
    ({"vae": {"dec_layers": [4]}}, "vae.dec_layers"),
])
def test_bad_params_name_the_field(params, words):
    with pytest.raises(ValueError, match=words):
        SDUNetSpace(**params)


def test_graph_has_the_kept_blocks_and_skips():
    space = SDUNetSpace(preset="tiny")
    g = space.graph(space.reference_architectures()["bk_sdm_tiny"])
    kinds = [d["kind"] for _, d in g.nodes(data=True)]
    assert kinds.count("attention") == 3 + 6        # 1 per down stage, 2 per up stage
    assert "mid" not in kinds
    assert sum(1 for *_, d in g.edges(data=True) if d.get("skip")) == 3 * 2 + 3 - 3
    import networkx as nx

    assert nx.is_directed_acyclic_graph(g)


# ------------------------------------------------------------------ surgery
def test_kept_blocks_give_the_teacher_blocks_output():
    space = SDUNetSpace(preset="tiny")
    teacher = space.teacher()
    student = space.build(space.reference_architectures()["bk_sdm_base"])
    temb = torch.randn(2, TINY.temb_channels)
    ehs = torch.randn(2, 8, TINY.cross_attention_dim)
    with torch.no_grad():
        for name in ("down.1.pairs.0", "up.1.pairs.2", "up.3.pairs.0"):
            s, t = student.get_submodule(name), teacher.get_submodule(name)
            c_in = t.resnet.in_channels
            h = torch.randn(2, c_in, 4, 4)
            assert torch.equal(s(h, temb, ehs), t(h, temb, ehs)), name
    # up.1.pairs.2 of BK-SDM Base now reads the skip of down.1.pairs.0 instead of
    # down.1.pairs.1 (same width): the structure differs, the blocks do not


def test_narrowed_layers_take_the_most_important_teacher_channels():
    space = SDUNetSpace(preset="tiny", widths=[1.0, 0.5])
    teacher = space.teacher_state()
    arch = Architecture({**space.reference_architectures()["sd15"], "width0": 0.5})
    plan = space.plan(arch)
    assert plan.widths[0] == 16
    student = space.build(arch).state_dict()
    idx = level_indices(teacher, plan)[0]
    assert idx is not None and len(idx) == 16 and torch.all(idx[1:] > idx[:-1])
    assert torch.equal(student["conv_in.weight"], teacher["conv_in.weight"][idx])
    assert torch.equal(student["conv_out.weight"], teacher["conv_out.weight"][:, idx])
    # the kept channels are those with the largest summed filter norms
    from nasframe_search_spaces.sd_unet.surgery import level_importance

    score = level_importance(teacher, plan.config)[0]
    assert score[idx].min() >= score[[i for i in range(32) if i not in set(idx.tolist())]].max()
    # untouched levels keep every channel
    assert level_indices(teacher, plan)[1] is None
    with torch.no_grad():
        out = space.build(arch)(*_inputs())
    assert torch.isfinite(out).all()


def test_teacher_loads_from_a_diffusers_folder(tmp_path, diffusers_unet):
    diffusers_unet.save_pretrained(tmp_path / "pipe" / "unet")
    space = SDUNetSpace(preset="tiny", teacher={"path": str(tmp_path / "pipe")})
    arch = space.reference_architectures()["sd15"]
    space.prepare(Context(tmp_path / "run", quiet=True), frozenset({Teacher}))
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(space.build(arch)(*x), diffusers_unet(*x).sample)
    # and from the bare safetensors file
    file = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    space2 = SDUNetSpace(preset="tiny", teacher={"path": str(file)})
    with torch.no_grad():
        assert torch.equal(space2.teacher()(*x), diffusers_unet(*x).sample)


def test_a_teacher_of_another_configuration_is_a_clear_error(tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(**{**TINY.to_diffusers(), "cross_attention_dim": 16})
    other.save_pretrained(tmp_path / "unet")
    space = SDUNetSpace(preset="tiny", teacher={"path": str(tmp_path / "unet")})
    with pytest.raises(ValueError, match="cross_attention_dim"):
        space.teacher_state()


def test_config_round_trip_through_diffusers():
    assert UNetConfig.from_diffusers(TINY.to_diffusers()) == UNetConfig(
        **{**TINY.__dict__, "context_length": 77})
    with pytest.raises(ValueError, match="use_linear_projection"):
        UNetConfig.from_diffusers({**TINY.to_diffusers(), "use_linear_projection": True})


# ------------------------------------------------------------------ fidelity
def test_fidelity_is_perfect_for_the_teacher_and_drops_with_surgery(ctx):
    space = SDUNetSpace(preset="tiny", fidelity={"samples": 4, "batch_size": 4})
    f = Fidelity()
    f.prepare(space, ctx)
    refs = space.reference_architectures()
    full, prov = f(Candidate(space, refs["sd15"]), ctx)
    assert full == pytest.approx(120.0)
    assert prov.kind == "proxy" and prov.details["stage_rel_mse"]["up3"] == 0
    tiny, prov = f(Candidate(space, refs["bk_sdm_tiny"]), ctx)
    assert tiny < 30
    assert set(prov.details["stage_rel_mse"]) == {"down0", "down1", "down2", "up1", "up2", "up3"}
    nano, _ = f(Candidate(space, refs["nanosd"]), ctx)
    assert tiny < nano < full


@pytest.mark.slow
def test_distilled_pairs_improve_and_are_trained_once(ctx):
    space = SDUNetSpace(preset="tiny", pairs=["full", "resnet"], mid="remove", innermost="remove",
                        fidelity={"samples": 4, "batch_size": 4})
    arch = Architecture({**space.reference_architectures()["nanosd"],
                         "down1_0": "resnet", "up2_1": "resnet"})
    plain = Fidelity()
    plain.prepare(space, ctx)
    before, _ = plain(Candidate(space, arch), ctx)
    f = Fidelity(distill={"steps": 30, "lr": 2e-3})
    first, prov = f(Candidate(space, arch), ctx)
    assert prov.details["distill"]["trained"] == 2 and prov.details["distill"]["cached"] == 0
    assert first > before
    # a candidate sharing one of the two variants reuses it from the cache
    other = Architecture({**space.reference_architectures()["nanosd"], "down1_0": "resnet"})
    _, prov = f(Candidate(space, other), ctx)
    assert prov.details["distill"] == {**prov.details["distill"], "trained": 0, "cached": 1}
    again, prov = f(Candidate(space, arch), ctx)
    assert prov.details["distill"]["cached"] == 2 and again == pytest.approx(first)
    files = list((ctx.run_dir / "cache" / "sd_unet" / "pairs").glob("*.result.json"))
    assert len(files) == 2 and all(json.loads(p.read_text())["after"] < json.loads(
        p.read_text())["before"] for p in files)


def test_fidelity_needs_a_space_with_a_teacher(ctx):
    from nasframe_search_spaces.denoiser import ConvDenoiserSpace

    assert capabilities.missing(ConvDenoiserSpace(input_size=16), Fidelity().requirements()) == [Teacher]
    assert BlockAlignment in Fidelity(distill={"steps": 2}).requirements()
    with pytest.raises(ValueError, match="feature_weight"):
        Fidelity(feature_weight=2)
    with pytest.raises(ValueError, match="distillation works on the main model only"):
        Fidelity(part="vae_decoder", distill={"steps": 2})


# ------------------------------------------------------------------ parts
def test_vae_and_pipeline_parts(ctx):
    space = SDUNetSpace(preset="tiny", vae={"search": True, "dec_widths": [1.0, 0.5],
                                            "dec_layers": [3, 1], "enc_widths": [1.0],
                                            "enc_layers": [2]})
    names = [d.name for d in space.decisions()]
    assert names[-2:] == ["vae_dec_width", "vae_dec_layers"]
    ref = space.reference_architectures()["sd15"]
    small = Architecture({**ref, "vae_dec_width": 0.5, "vae_dec_layers": 1})
    p_full = Params(part="vae_decoder")
    p_full.prepare(space, ctx)
    big, _ = p_full(Candidate(space, ref), ctx)
    little, prov = p_full(Candidate(space, small), ctx)
    assert little < big and prov.details["part"] == "vae_decoder"
    unet, _ = GMACs()(Candidate(space, ref), ctx)
    dec, _ = GMACs(part="vae_decoder")(Candidate(space, ref), ctx)
    pipe, _ = GMACs(part="pipeline")(Candidate(space, ref), ctx)
    assert pipe == pytest.approx(unet + dec, rel=0.01)
    from nasframe_objectives.latency import Latency

    lat = Latency(part="pipeline", options={"repeats": 2, "warmup": 1})
    lat.prepare(space, ctx)
    ms, prov = lat(Candidate(space, ref), ctx)
    assert ms > 0 and prov.kind == "measured" and prov.details["part"] == "pipeline"
    assert prov.details["input_shape"][0] == [1, 4, 16, 16]
    f = Fidelity(part="vae_decoder")
    f.prepare(space, ctx)
    assert f(Candidate(space, ref), ctx)[0] == pytest.approx(120.0)
    assert f(Candidate(space, small), ctx)[0] < 30
    with pytest.raises(ConfigError, match="vae_decoder"):
        Fidelity(part="vae_decoder", distill={"steps": 5}).prepare(space, ctx)


def test_neighbours_include_the_coupled_removal_moves():
    space = SDUNetSpace(preset="tiny")
    teacher = space.reference_architectures()["sd15"]
    near = space.neighbours(teacher)
    assert all(space.validate(a) is None for a in near)
    # removing a down pair alone is invalid; with its up pair it is one move
    both = [a for a in near if a["down1_1"] == "removed"]
    assert both and all(sum(v == "removed" for v in a.values()) == 2 for a in both)
