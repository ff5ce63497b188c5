"""hybrid_unet: blocks, scan backends, the network, the space, alignment and its objectives."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasframe.candidate import Candidate
from nasframe.capabilities import TrainedWeights
from nasframe.context import Context
from nasframe.errors import ConfigError
from nasframe.testing import plugin_context
from nasframe_objectives.cost import GMACs, Params
from nasframe_objectives.restoration import PSNR, SSIM, TransformerCount
from nasframe_search_spaces.hybrid_unet import scan as sc
from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock
from nasframe_search_spaces.hybrid_unet.network import PRESETS, STAGES, HybridRestormer
from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

TINY_DATA = {"short_side": 48, "val_size": 32, "patch": 16}


class _NotATensor:
    pass


def _scan_inputs(b=2, L=37, h=4, p=3, g=2, n=5, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=gen, dtype=dtype))
    A = -torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.05
    B = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    D = torch.randn(h, generator=gen, dtype=dtype)
    return x, dt, A, B, C, D


def mamba1_reference(u, delta, A, B, C, D):
    """An independent selective scan in mamba-ssm's layout and semantics (Mamba-1):
    u, delta (b, d, L); A (d, n); B, C (b, g, n, L); D (d,). Stands in for the CUDA kernel."""
    b, d, L = u.shape
    g = B.shape[1]
    y = torch.empty_like(u)
    for bi in range(b):
        for ch in range(d):
            gi = ch // (d // g)
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(L):
                h = torch.exp(delta[bi, ch, t] * A[ch]) * h + delta[bi, ch, t] * B[bi, gi, :, t] * u[bi, ch, t]
                y[bi, ch, t] = (C[bi, gi, :, t] * h).sum() + D[ch] * u[bi, ch, t]
    return y


# -- scans -----------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_scan_equals_the_sequential_reference(chunk):
    args = _scan_inputs()
    ref = sc.scan_sequential(*args)
    assert torch.allclose(sc.scan_chunked(*args, chunk=chunk), ref, atol=1e-10)


def test_numba_scan_equals_the_sequential_reference():
    pytest.importorskip("numba")
    args = _scan_inputs(dtype=torch.float32)
    ref = sc.scan_sequential(*(a.double() for a in args))
    with torch.no_grad():
        out = sc.scan_numba(*args)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-4)


def test_numba_scan_refuses_gradients():
    pytest.importorskip("numba")
    x, *rest = _scan_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="without gradients"):
        sc.scan_numba(x.requires_grad_(), *rest)


def test_mamba_ssm_backend_maps_the_recurrence_onto_mamba1_layout(monkeypatch):
    """mamba-ssm needs CUDA; its kernel is replaced at the boundary by an independent Mamba-1 scan."""
    monkeypatch.setattr(sc, "mamba_ssm_scan", lambda: mamba1_reference)
    args = _scan_inputs(L=12)
    assert torch.allclose(sc.scan_mamba_ssm(*args), sc.scan_sequential(*args), atol=1e-10)


def test_mamba_ssm_backend_without_the_package_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(sc, "mamba_ssm_scan", lambda: None)
    with pytest.raises(RuntimeError, match="nasframe\\[cuda\\]"):
        sc.scan_mamba_ssm(*_scan_inputs(L=4))


def test_auto_backend_uses_numba_for_inference_and_chunked_for_training():
    x = torch.zeros(1, 4, 1, 2)
    with torch.no_grad():
        assert sc.resolve_backend("auto", x) == ("numba" if sc.numba_available() else "chunked")
    assert sc.resolve_backend("auto", x) == "chunked"
    with pytest.raises(ValueError, match="not one of"):
        sc.resolve_backend("cuda", x)


def test_traced_scan_has_the_chunked_gradient():
    args = [a.clone().requires_grad_() for a in _scan_inputs(L=20)]
    out = sc.SelectiveScan.apply(*args, "chunked", 8)
    grads = torch.autograd.grad(out.square().sum(), args)
    args2 = [a.detach().clone().requires_grad_() for a in args]
    grads2 = torch.autograd.grad(sc.scan_chunked(*args2, chunk=8).square().sum(), args2)
    for g1, g2 in zip(grads, grads2):
        assert torch.allclose(g1, g2, atol=1e-10)


# -- blocks ----------------------------------------------------------------
@pytest.mark.parametrize("orders", [1, 2, 4])
def test_ssm_block_backends_agree(orders):
    torch.manual_seed(0)
    block = SSMBlock(16, d_state=4, headdim=8, orders=orders).double().eval()
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)   # non-square: row/column orders differ
    outs = {}
    with torch.no_grad():
        for backend in ("sequential", "chunked") + (("numba",) if sc.numba_available() else ()):
            block.ssm.backend = backend
            outs[backend] = block(x)
    for backend, out in outs.items():
        assert torch.allclose(out, outs["sequential"], atol=1e-5), backend


@pytest.mark.parametrize("make", [lambda: TransformerBlock(16, 2), lambda: SSMBlock(16, orders=4)])
def test_blocks_keep_the_shape_and_pass_gradients(make):
    torch.manual_seed(0)
    block = make()
    x = torch.randn(2, 16, 8, 12, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in block.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= len(grads) - 1


def test_scan_orders_see_the_map_differently():
    """Row- and column-major scans differ on a non-symmetric map."""
    torch.manual_seed(0)
    block = SSMBlock(8, d_state=4, headdim=8, orders=1).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y = block(x)
        yt = block(x.transpose(2, 3)).transpose(2, 3)
    assert not torch.allclose(y, yt, atol=1e-4)


# -- network -----------------------------------------------------------------
def test_restormer_preset_matches_the_published_network():
    cfg = PRESETS["restormer"]
    assert len(cfg.slots()) == 44
    model = HybridRestormer(cfg, {s: ["transformer"] * cfg.stage_blocks(s) for s in STAGES})
    assert sum(p.numel() for p in model.parameters()) == 26_126_644   # Restormer: 26.13 M


@pytest.mark.parametrize("size", [(16, 16), (13, 21)])
def test_network_restores_the_input_shape(size):
    space = HybridUNetSpace(preset="tiny")
    model = space.build(space.sample(np.random.default_rng(0)))
    x = torch.rand(1, 3, *size)
    assert model(x).shape == x.shape


# -- space -------------------------------------------------------------------
def test_granularities_and_references():
    block = HybridUNetSpace(preset="restormer", granularity="block")
    stage = HybridUNetSpace(preset="restormer", granularity="stage")
    assert len(block.decisions()) == 44 and len(stage.decisions()) == 8
    refs = stage.reference_architectures()
    assert set(refs) == {"teacher", "all_ssm"}
    assert stage.transformer_count(refs["teacher"]) == 44
    assert stage.transformer_count(refs["all_ssm"]) == 0
    arch = stage.uniform("ssm").replace(latent="transformer")
    assert stage.transformer_count(arch) == 8


def test_graph_describes_every_block():
    space = HybridUNetSpace(preset="restormer", granularity="stage", input_size=256)
    arch = space.uniform("ssm").replace(enc1="transformer")
    g = space.graph(arch)
    blocks = {n: d for n, d in g.nodes(data=True) if d["kind"] in ("transformer", "ssm")}
    assert len(blocks) == 44
    assert sum(d["kind"] == "transformer" for d in blocks.values()) == 4
    assert g.nodes["latent_0"]["channels"] == 384 and g.nodes["latent_0"]["resolution"] == 32
    assert g.nodes["dec1_0"]["channels"] == 96 and g.nodes["dec1_0"]["resolution"] == 256
    assert g.has_edge("enc1_3", "merge_dec1")          # the level-1 skip
    import networkx as nx
    assert nx.is_directed_acyclic_graph(g)
    assert all({"kind", "channels", "resolution"} <= set(d) for _, d in g.nodes(data=True))


@pytest.mark.parametrize("params, match", [
    ({"preset": "huge"}, "preset"),
    ({"granularity": "layer"}, "granularity"),
    ({"task": "dehaze"}, "task"),
    ({"network": {"dims": 8}}, "did you mean 'dim'"),
    ({"network": {"blocks": [1, 2]}}, "network.blocks"),
    ({"network": {"ssm": {"order": 2}}}, "did you mean 'orders'"),
    ({"teacher": {"stepz": 3}}, "teacher"),
    ({"distill": {"steps": 0}}, "distill.steps"),
    ({"data": {"sigmaa": 3}}, "data: .*did you mean 'sigma'"),
    ({"task": "deblur", "data": {"task": "derain"}}, "set the task once"),
])
def test_bad_params_name_the_field(params, match):
    with pytest.raises(ValueError, match=match):
        HybridUNetSpace(**params)


# -- alignment ---------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(2)
    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA,
                            teacher={"steps": 40, "batch_size": 4},
                            distill={"steps": 120, "batch_size": 4, "lr": 0.003})
    ctx = plugin_context(tmp_path_factory.mktemp("run"))
    space.prepare(ctx, frozenset({TrainedWeights}))
    return space, ctx


def test_preparation_without_trained_weights_trains_nothing(tmp_path):
    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA)
    space.prepare(plugin_context(tmp_path), frozenset())      # cost objectives only
    assert not space.prepared and not (tmp_path / "cache").exists()
    assert not (tmp_path / "alignment.json").exists()


@pytest.mark.slow
def test_surrogates_learn_to_mimic_their_transformer_blocks(prepared):
    space, _ = prepared
    s = space._bank.report["surrogates"]
    trained, untrained = s["relative_mse"], s["relative_mse_untrained"]
    assert set(trained) == {HybridRestormer.block_name(st, i) for st, i in space.slots}
    assert np.mean(list(trained.values())) < 0.5 * np.mean(list(untrained.values()))
    assert sum(trained[k] < untrained[k] for k in trained) >= len(trained) - 1


@pytest.mark.slow
def test_bank_assembles_hybrids_without_retraining(prepared, tmp_path):
    space, ctx = prepared
    teacher = space.build(space.reference_architectures()["teacher"]).eval()
    arch = space.uniform("transformer").replace(enc1="ssm")
    hybrid = space.build(arch).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        # the hybrid's encoder-1 block is the distilled surrogate, everything else the teacher's
        assert torch.equal(hybrid.patch_embed.weight, teacher.patch_embed.weight)
        f_teacher = teacher.encoder_level1[0](teacher.patch_embed(x))
        f_hybrid = hybrid.encoder_level1[0](hybrid.patch_embed(x))
        assert hybrid.encoder_level1[0].kind == "ssm"
        rel = float((f_hybrid - f_teacher).square().mean() / f_teacher.square().mean())
        assert rel < 0.5
    # a second space with the same settings loads everything from the cache
    again = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA,
                            teacher={"steps": 40, "batch_size": 4},
                            distill={"steps": 120, "batch_size": 4, "lr": 0.003})
    again.prepare(ctx, frozenset({TrainedWeights}))
    assert again._bank.report["surrogates"]["cached"]
    with torch.no_grad():
        assert torch.equal(again.build(arch)(x), hybrid(x))


@pytest.mark.slow
def test_stitching_trains_the_surrogates_on_the_networks_output(prepared):
    space, ctx = prepared
    stitched = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA,
                               teacher={"steps": 40, "batch_size": 4},
                               distill={"steps": 120, "batch_size": 4, "lr": 0.003,
                                        "stitch": {"steps": 60, "lr": 0.002}})
    stitched.prepare(ctx, frozenset({TrainedWeights}))     # teacher and surrogates from the cache
    report = stitched._bank.report["surrogates"]
    assert report["cached"] and not report["stitch"]["cached"]
    err, err0 = report["stitch"]["output_error"], report["stitch"]["output_error_before"]
    names = {HybridRestormer.block_name(st, i) for st, i in space.slots}
    assert set(err) == names | {"all"}
    assert err["all"] < err0["all"]
    # the teacher is the same; the surrogates are not: all-SSM is nearer the teacher's PSNR
    assert all(torch.equal(stitched._bank.teacher[k], v) for k, v in space._bank.teacher.items())
    all_ssm = space.reference_architectures()["all_ssm"]
    before = PSNR()(Candidate(space, all_ssm), ctx)[0]
    after = PSNR()(Candidate(stitched, all_ssm), ctx)[0]
    assert after > before, (before, after)
    assert stitched.reference_architectures()["all_ssm"] == all_ssm


@pytest.mark.slow
def test_quality_objectives_on_the_aligned_space(prepared):
    space, ctx = prepared
    refs = space.reference_architectures()
    values = {}
    for name, arch in refs.items():
        cand = Candidate(space, arch)
        values[name] = {o.name: o(cand, ctx) for o in (PSNR(), SSIM(), TransformerCount())}
    teacher, all_ssm = values["teacher"], values["all_ssm"]
    assert teacher["transformer_count"][0] == 8 and all_ssm["transformer_count"][0] == 0
    assert teacher["psnr"][1].kind == "measured" and teacher["transformer_count"][1].kind == "proxy"
    report = space._bank.report
    assert teacher["psnr"][0] == pytest.approx(report["teacher_psnr"], abs=1e-6)
    assert teacher["psnr"][0] > report["input_psnr"]            # the teacher restores
    assert 0 < teacher["ssim"][0] <= 1
    assert math.isfinite(all_ssm["psnr"][0])


@pytest.mark.slow
def test_teacher_weights_load_from_a_path(prepared, tmp_path):
    space, ctx = prepared
    path = tmp_path / "teacher.pt"
    torch.save(space._bank.teacher, path)
    loaded = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA,
                             teacher={"weights": str(path)},
                             distill={"steps": 120, "batch_size": 4, "lr": 0.003})
    loaded.prepare(ctx, frozenset({TrainedWeights}))
    assert loaded._bank.report["teacher"]["source"] == str(path)
    for k, v in space._bank.teacher.items():
        assert torch.equal(loaded._bank.teacher[k], v)


def test_bad_teacher_weights_are_config_errors(tmp_path):
    ctx = Context(run_dir=tmp_path, quiet=True)
    need = frozenset({TrainedWeights})
    with pytest.raises(ValueError, match="teacher.weights: no file at"):    # when the space is made
        HybridUNetSpace(preset="tiny", data=TINY_DATA, teacher={"weights": str(tmp_path / "no.pt")})
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match="does not fit"):
        HybridUNetSpace(preset="tiny", data=TINY_DATA, teacher={"weights": str(wrong)}).prepare(ctx, need)
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": _NotATensor()}, pickled)     # needs unpickling of arbitrary code
    with pytest.raises(ConfigError, match="safely"):
        HybridUNetSpace(preset="tiny", data=TINY_DATA, teacher={"weights": str(pickled)}).prepare(ctx, need)


# -- cost objectives on SSM blocks -------------------------------------------
def test_gmacs_counts_the_scan(tmp_path):
    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=32)
    ctx = plugin_context(tmp_path)                # carries the plugins' op handles
    teacher = GMACs()(Candidate(space, space.uniform("transformer")), ctx)
    all_ssm = GMACs()(Candidate(space, space.uniform("ssm")), ctx)
    assert not any("SelectiveScan" in op for op in all_ssm[1].details["unsupported_ops"])
    assert "prim::PythonOp.SelectiveScan" in all_ssm[1].details["handled_ops"]
    assert teacher[1].details["handled_ops"] == []
    # removing one block's scan op changes the count by exactly its formula
    block = SSMBlock(8, d_state=4, headdim=8, orders=2).eval()
    from fvcore.nn import FlopCountAnalysis

    x = torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        counted = FlopCountAnalysis(block, (x,)).set_op_handle(**ctx.op_handles)
        counted.unsupported_ops_warnings(False)
        by_op = counted.by_operator()
    assert by_op["PythonOp.SelectiveScan"] == 32 * 32 * 2 * 8 * (3 * 4 + 1)
    assert teacher[0] > 0 and all_ssm[0] > 0
    assert Params()(Candidate(space, space.uniform("ssm")), ctx)[0] > 0
