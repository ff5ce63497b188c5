"""quad: LoRA with A/B as graph inputs on hybrid_unet's tiny preset, shared profiles, QUAD, the space."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasframe.capabilities import MultiTask, TrainedWeights
from nasframe.candidate import Candidate
from nasframe.testing import plugin_context

pytest.importorskip("skimage")

from nasframe_search_spaces.hybrid_unet.align import all_kinds  # noqa: E402
from nasframe_search_spaces.hybrid_unet.blocks import LayerNorm2d, TransformerBlock  # noqa: E402
from nasframe_search_spaces.hybrid_unet.network import HybridRestormer, preset  # noqa: E402
from nasframe_search_spaces.quad.lora import LoRANet  # noqa: E402
from nasframe_search_spaces.quad.quant import Profile, QuantSim, quad  # noqa: E402
from nasframe_search_spaces.quad.space import QuadSpace  # noqa: E402


def tiny_net(rank=2, seed=0) -> LoRANet:
    torch.manual_seed(seed)
    cfg = preset("tiny")
    return LoRANet(HybridRestormer(cfg, all_kinds(cfg, "transformer")), rank=rank).eval()


def test_adapters_wrap_every_dense_layer_and_skip_depthwise():
    net = tiny_net()
    kinds = {type(m.base).__name__ for m in net.layers}
    assert kinds == {"Conv2d", "Linear"} or kinds == {"Conv2d"}
    assert all(getattr(m.base, "groups", 1) == 1 for m in net.layers)
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 16, 16)
    zero = net.init_adapter(0)           # B = 0: the base unchanged
    with torch.no_grad():
        assert torch.equal(net(x), net(x, *zero))
    with pytest.raises(ValueError, match="expected"):
        net.check_adapter(zero[:-1])


def test_branch_equals_merged_weights_and_rank_zero_layers_are_left_alone():
    net = tiny_net()
    ad = net.init_adapter(1, b_std=0.05)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        y, ref, base = net(x, *ad), net.merged(ad)(x), net(x)
    assert (y - ref).abs().max() < 1e-5
    assert (y - base).abs().max() > 1e-3        # the adapter does something
    partial = LoRANet(tiny_net().net, rank=lambda n: 0 if n.startswith("latent") else 2)
    assert partial.slots and not any(s.name.startswith("latent") for s in partial.slots)


def test_fit_adapter_is_the_best_low_rank_approximation():
    big = tiny_net(rank=4)
    full = big.adapter_state(big.init_adapter(2, b_std=0.1))
    errors = []
    for r in (1, 2, 4, 6):
        small = LoRANet(tiny_net(rank=4).net.__class__(preset("tiny"), all_kinds(preset("tiny"), "transformer")),
                        rank=r)
        ad = small.fit_adapter(full)
        small.check_adapter(ad)
        err = 0.0
        for s, layer, a, b in zip(small.slots, small.layers, ad[0::2], ad[1::2]):
            want = type(layer).delta(full[s.input_names[0]], full[s.input_names[1]])
            err += float((type(layer).delta(a, b) - want).pow(2).sum())
        errors.append(err)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8 and errors[3] < 1e-8   # rank >= the full rank: exact


def test_one_onnx_graph_with_adapter_inputs_reproduces_every_merged_model(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from nasframe_search_spaces.quad.deploy import export_adapter_graph

    torch.set_num_threads(1)
    net = tiny_net()
    adapters = {f"task{i}": net.init_adapter(10 + i, b_std=0.05) for i in range(2)}
    report = export_adapter_graph(net, torch.rand(1, 3, 16, 16), adapters, tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    inputs = [i.name for i in model.graph.input]
    assert inputs == ["x", *net.input_names()]
    assert report["lora_inputs"] == 2 * len(net.slots) and report["lora_initializers"] == 0
    assert set(report["per_task"]) == set(adapters)
    for task, check in report["per_task"].items():
        assert check["max_abs_error"] < 1e-4, task
    assert (tmp_path / "g.onnx.tasks.json").is_file()


def _sim_and_batches(net, n_tasks=2):
    sim = QuantSim(net, observe_types=(LayerNorm2d, TransformerBlock))
    ads = {f"t{i}": net.init_adapter(20 + i, b_std=0.05 * (i + 1)) for i in range(n_tasks)}
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    return sim, ads, xs


def test_shared_profile_covers_every_task_and_round_trips_through_an_encodings_file(tmp_path):
    net = tiny_net()
    sim, ads, xs = _sim_and_batches(net)
    shared = sim.calibrate([(x, ad) for ad in ads.values() for x in xs])
    one = sim.calibrate([(x, ads["t1"]) for x in xs])
    key = f"{net.slots[0].name}.A"
    assert shared.encodings[key].symmetric and shared.encodings[key].bits == 8
    # the shared profile's ranges contain each task's own
    for k, e in one.encodings.items():
        assert shared.encodings[k].scale >= e.scale * (1 - 1e-6), k
    path = shared.save(tmp_path / "shared.encodings")
    back = Profile.load(path)
    assert back.encodings.keys() == shared.encodings.keys()
    assert back.weight_bits == shared.weight_bits
    for k, e in shared.encodings.items():
        b = back.encodings[k]
        assert (b.bits, b.symmetric, b.zero_point) == (e.bits, e.symmetric, e.zero_point)
        assert math.isclose(b.scale, e.scale, rel_tol=1e-12)
    x = xs[0]
    with torch.no_grad():
        sim.set_mode("quant", shared)
        y1 = sim(x, *ads["t0"])
        sim.set_mode("quant", back)
        y2 = sim(x, *ads["t0"])
        sim.set_mode("float")
        yf = sim(x, *ads["t0"])
    assert torch.equal(y1, y2)
    assert 0 < (y1 - yf).abs().max() < 0.5      # quantised, and close


def test_quad_trains_every_adapter_against_the_fixed_profile():
    net = tiny_net()
    sim, ads, xs = _sim_and_batches(net)
    shared = sim.calibrate([(x, ad) for ad in ads.values() for x in xs])
    before = {k: e.scale for k, e in shared.encodings.items()}
    teachers = {t: net.merged(ad) for t, ad in ads.items()}
    targets = {t: teachers[t](xs[0]).detach() for t in ads}
    trained = quad(sim, shared, ads, lambda t, k: (xs[0], targets[t]), teachers,
                   steps=4, lr=1e-3)
    assert {k: e.scale for k, e in shared.encodings.items()} == before   # the profile is fixed
    for t in ads:
        net.check_adapter(trained[t])
        assert any(not torch.equal(a, b) for a, b in zip(trained[t], ads[t])), t
    assert sim.mode == "float"


# -- the search space (its contract tests: tests/test_conformance.py) -------------------------
def test_params_are_checked():
    from nasframe.params import ParamError

    with pytest.raises(ParamError, match="tasks"):
        QuadSpace(tasks=["denoise", "denoise"])
    with pytest.raises(ParamError, match="data.task"):
        QuadSpace(data={"task": "deblur"})


def test_decisions_set_ranks_and_bits_per_block():
    space = QuadSpace(preset="tiny", granularity="block", ranks=[0, 4], input_size=16)
    names = [d.name for d in space.decisions()]
    assert "rank_enc1_0" in names and "bits_latent_0" in names
    arch = space.reference_architectures()["largest"].replace(rank_enc1_0=0, bits_enc1_0="w4a16")
    net = space.build(arch)
    assert not any(s.name.startswith("encoder_level1.") for s in net.slots)
    assert all(s.rank == 4 for s in net.slots if s.name.startswith("latent."))
    assert space.bits_of(arch, "encoder_level1.0.attn.qkv") == (4, 16)
    assert space.bits_of(arch, "patch_embed") == (8, 8)
    g = space.graph(arch)
    assert g.nodes["enc1_0"]["rank"] == 0 and g.nodes["enc1_0"]["bits"] == "w4a16"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(1)
    space = QuadSpace(**QuadSpace.small_params)
    ctx = plugin_context(tmp_path_factory.mktemp("quad"))
    space.prepare(ctx, frozenset({TrainedWeights, MultiTask}))
    return space, ctx


def test_prepare_caches_the_base_and_adapters(prepared):
    space, ctx = prepared
    again = QuadSpace(**QuadSpace.small_params)
    again.prepare(ctx, frozenset({TrainedWeights}))
    for t in space.tasks():
        for k, v in space._bank["adapters"][t].items():
            assert torch.equal(v, again._bank["adapters"][t][k])


def test_task_quality_reports_every_method_per_task(prepared):
    space, ctx = prepared
    arch = space.reference_architectures()["largest"]
    model = Candidate(space, arch, seed=0).model
    results = {m: space.task_quality(arch, model, ctx, m) for m in space.quality_methods()}
    for m, per_task in results.items():
        assert set(per_task) == set(space.tasks()) and all(np.isfinite(list(per_task.values()))), m
    # one shared profile for every task; the naive one is the first task's own
    prof = space.profiles(arch, model, ctx, baselines=True)
    assert prof["naive"].encodings == prof["separate"][space.tasks()[0]].encodings
    assert results["naive"][space.tasks()[0]] == results["separate"][space.tasks()[0]]
    with pytest.raises(ValueError, match="unknown method"):
        space.task_quality(arch, model, ctx, "bogus")


def test_calibration_inputs_fill_the_graph_input_from_smaller_crops():
    from nasframe_search_spaces.hybrid_unet.data import RestorationData
    from nasframe_search_spaces.quad.bundle import calibration_input

    data = RestorationData("derain", patch=16, short_side=48, val_size=32)
    x = calibration_input(data, 40, 3)
    assert x.shape == (1, 3, 40, 40)
    crops = data.train_batch(9, 3)[0]
    assert torch.equal(x[0, :, :16, :16], crops[0]) and torch.equal(x[0, :, 16:32, :16], crops[3])


pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A tiny quad model at w4a16 / w8a16 / w8a8 per stage, its float graph, its shared
    profile (every task's adapter in the calibration) and the shipped QDQ graph (shared by
    the tests below: the export dominates their time)."""
    tmp_path = tmp_path_factory.mktemp("mixed")
    return (tmp_path, *_mixed_bits_model(tmp_path))


def _mixed_bits_model(tmp_path):
    from nasframe_search_spaces.quad.deploy import export_adapter_graph, ship_profile

    torch.set_num_threads(1)

    space = QuadSpace(preset="tiny", granularity="stage", ranks=[2], input_size=16)
    arch = space.reference_architectures()["largest"].replace(bits_enc1="w4a16", bits_latent="w8a16",
                                                               bits_dec1="w8a8")
    net = space.build(arch).eval()
    net.task_adapters = {f"t{i}": net.init_adapter(30 + i, b_std=0.05) for i in range(2)}
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    export_adapter_graph(net, x, net.task_adapters, tmp_path / "g.onnx")
    sim = space._sim(arch, net)
    g = torch.Generator().manual_seed(4)
    profile = sim.calibrate([(torch.rand(2, 3, 16, 16, generator=g), a)
                             for a in net.task_adapters.values()])
    enc = ship_profile(sim, profile, tmp_path / "g.onnx", tmp_path / "q.onnx", tmp_path / "g.encodings")
    return space, arch, net, sim, profile, enc, x


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def test_qdq_graph_carries_the_trained_profile_at_each_blocks_bit_widths(mixed):
    """The QDQ graph holds exactly the simulation's encodings under the graph's tensor names
    (no re-calibration: ONNX Runtime reproduces the simulation far below its quantisation
    noise), each block's widths (int4/int8 weights, uint16/uint8 activations, int8
    adapters), per-channel scales only on weights of rank >= 2 with zero points of the
    scale's shape, scalar scale and zero point elsewhere."""
    import onnx
    from onnx import numpy_helper

    from nasframe.deploy import qdq_session
    from nasframe_search_spaces.quad.deploy import feed, layer_of, map_profile
    from nasframe_search_spaces.quad.quant import INPUT_KEY

    tmp_path, space, arch, net, sim, profile, enc, x = mixed
    float_graph = onnx.load(str(tmp_path / "g.onnx"))
    names = ({i.name for i in float_graph.graph.input} | {o for n in float_graph.graph.node for o in n.output}
             | {i.name for i in float_graph.graph.initializer})
    acts, params = enc["activation_encodings"], enc["param_encodings"]
    assert {e["name"] for e in acts + params} <= names            # names of graph.onnx
    assert {e["name"] for e in acts} >= {"x", *net.input_names()}
    # every point of the simulation is in the file (a layer input at its producer's encoding once)
    assert len(acts) + len(enc["requantised_inputs"]) >= len([k for k in profile.encodings
                                                              if not k.endswith(".in")])
    # the encodings are the profile's: the input's scale, and every adapter tensor int8 symmetric
    x_enc = next(e for e in acts if e["name"] == "x")
    assert x_enc["scale"] == [profile.encodings[INPUT_KEY].scale]
    assert all(e["bw"] == 8 and e["is_sym"] for e in acts if e["name"].startswith("lora."))
    assert {e["bw"] for e in params} == {4, 8} and {e["bw"] for e in acts} == {8, 16}
    # a w8a16 block feeding a w8a8 layer: that layer requantises its input
    assert any(r["bw"] == 8 for r in enc["requantised_inputs"])

    qdq = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    T = onnx.TensorProto
    types = {i.name: i.data_type for i in qdq.graph.initializer}
    checked = {4: 0, 8: 0, 16: 0}
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale, zp = inits[node.input[1]], inits[node.input[2]]
        assert zp.shape == scale.shape, node.name
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if scale.ndim:        # per channel: a weight of rank >= 2, one scale per output channel
            w = inits[node.input[0]]
            assert w.ndim >= 2 and scale.shape == (w.shape[axis],), node.name
            layer = layer_of(node.input[0].removesuffix("_quantized"))
            wb = space.bits_of(arch, layer)[0]
            assert types[node.input[0]] == (T.INT4 if wb == 4 else T.INT8), node.name
            checked[wb] += 1
        else:
            assert scale.shape == () and zp.shape == (), node.name
            checked[16] += types[node.input[2]] == T.UINT16
    assert all(checked.values()), checked
    # no re-calibration: every Q/DQ pair holds the profile's scale and zero point ...
    by_name = {e["name"]: e for e in acts}
    for e in by_name.values():
        scale, zp = inits[f"{e['name']}_scale"], inits[f"{e['name']}_zero_point"]
        assert float(scale) == np.float32(e["scale"][0]) and int(zp) == (0 if e["is_sym"] else -e["offset"][0])
    # ... every point of the simulation at its tensor with the profile's encoding (a layer
    # input at other bits than its producer's: a requantisation on that layer's edge)
    requant = {(r["name"], r["layer"]): r for r in enc["requantised_inputs"]}
    for key, name in map_profile(sim, tmp_path / "g.onnx", x, net.init_adapter(7, b_std=0.1)):
        want = profile.encodings[key].to_aimet(name)
        assert by_name[name] == want or requant[name, key[:-len(".in")]] == \
            {**want, "layer": key[:-len(".in")]}, key
    # ... and ONNX Runtime runs the simulation's quantisation: closer to it than the
    # simulation is to the float model (what remains are rounding flips, amplified by norms)
    sess = qdq_session(tmp_path / "q.onnx", threads=1)
    for task, adapter in net.task_adapters.items():
        got = sess.run(None, feed(net, x, adapter))[0]
        with torch.no_grad():
            sim.set_mode("quant", profile)
            want = sim(x, *adapter).numpy()
            sim.set_mode("float")
            fp = net(x, *adapter).numpy()
        noise = _psnr(want, fp)            # what quantising costs
        assert _psnr(got, want) > noise, (task, _psnr(got, want), noise)


def test_the_qdq_graph_compiles_for_the_emulated_npu_without_cpu_fallback(mixed):
    """onnxruntime-qnn's HTP backend (Snapdragon 8 Elite, emulated on x86) compiles the QDQ
    graph with CPU fallback off, and computes what ONNX Runtime's CPU computes from it
    within the quantisation noise."""
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (the NPU compiler) is not installed")
    from nasframe.deploy import qdq_session
    from nasframe_search_spaces.quad.deploy import feed, htp_session

    tmp_path, space, arch, net, sim, profile, enc, x = mixed
    npu = htp_session(tmp_path / "q.onnx")
    cpu = qdq_session(tmp_path / "q.onnx", threads=1)
    for adapter in net.task_adapters.values():
        f = feed(net, x, adapter)
        got, want = npu.run(None, f)[0], cpu.run(None, f)[0]
        with torch.no_grad():
            fp = net(x, *adapter).numpy()
        assert _psnr(got, want) >= _psnr(want, fp) - 3, (_psnr(got, want), _psnr(want, fp))


def test_aimet_loads_the_encodings_strictly_and_imports_the_qdq_graph(mixed):
    """aimet-onnx (Qualcomm's quantisation toolkit) loads graph.encodings onto the float
    graph with strict=True and imports the QDQ graph with from_onnx_qdq; both simulate what
    ONNX Runtime runs from the QDQ graph."""
    pytest.importorskip("aimet_onnx", reason="aimet-onnx is not installed "
                        "(pip install --no-deps aimet-onnx==2.42.0, see docs/quad.md)")
    import onnx
    from aimet_onnx.quantsim import QuantizationSimModel

    from nasframe.deploy import qdq_session
    from nasframe_search_spaces.quad.deploy import aimet_sim, feed

    tmp_path, space, arch, net, sim, profile, enc, x = mixed
    loaded = aimet_sim(tmp_path / "g.onnx", tmp_path / "g.encodings")
    on = {n for n, q in loaded.qc_quantize_op_dict.items() if q.enabled}
    assert on == {e["name"] for e in enc["activation_encodings"] + enc["param_encodings"]}
    imported = QuantizationSimModel.from_onnx_qdq(onnx.load(str(tmp_path / "q.onnx")))
    cpu = qdq_session(tmp_path / "q.onnx", threads=1)
    for adapter in net.task_adapters.values():
        f = feed(net, x, adapter)
        want = cpu.run(None, f)[0]
        with torch.no_grad():
            fp = net(x, *adapter).numpy()
        for aimet in (loaded, imported):
            got = aimet.session.run(None, f)[0]
            assert _psnr(got, want) >= _psnr(want, fp) - 3


@pytest.mark.slow
def test_latency_of_the_quantised_graph_needs_no_training(tmp_path):
    """latency with graph: quantised times the QDQ graph (adapters as inputs) in ONNX
    Runtime; a cost-only experiment trains nothing; the wrong backend is a param error."""
    from nasframe.params import ParamError
    from nasframe.plugins import get_plugins

    latency = get_plugins().objectives.get("latency")
    with pytest.raises(ParamError, match="graph"):
        latency({"graph": "quantised"})
    obj = latency({"graph": "quantised", "backend": "onnxruntime",
                   "options": {"threads": 1, "repeats": 2, "warmup": 1}})
    from nasframe.capabilities import QuantisedGraph

    assert QuantisedGraph in obj.requirements()
    space = QuadSpace(**{**QuadSpace.small_params, "ranks": [2]})
    ctx = plugin_context(tmp_path)
    arch = space.reference_architectures()["largest"].replace(bits_enc1="w4a16")
    cand = Candidate(space, arch, seed=0)
    value = obj.evaluate(cand, ctx)
    assert value.value > 0 and space._bank is None       # not prepared: nothing trained
    export = value.details["export"]
    assert export["graph"] == "quantised" and export["max_rel_error"] < 1e-4
    assert "w4a16" in export["note"] and "quantisation" in export["note"]
    names = [n for n in value.details["input_shape"]]
    assert len(names) == 1 + 2 * len(cand.model.slots)      # the image and every A/B tensor
    again = obj.evaluate(Candidate(space, arch, seed=0), ctx)     # cached export
    assert again.details["export"]["graph_hash"] == export["graph_hash"]


@pytest.mark.slow
def test_lora_inputs_on_an_sd_unet_unet_of_three_inputs(tmp_path):
    """The design takes sd_unet: LoRA on the diffusion U-Net (latent, timestep, text
    embedding as model inputs); one ONNX graph, adapters as inputs, each task's adapter
    reproduces its merged U-Net."""
    pytest.importorskip("diffusers")
    import onnx

    from nasframe_search_spaces.quad.deploy import export_adapter_graph
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    space = SDUNetSpace(preset="tiny", latent_size=8)
    cand = Candidate(space, space.reference_architectures()["nanosd"], seed=0)
    inputs = cand.example_inputs()
    torch.manual_seed(0)
    net = LoRANet(cand.model.eval(), rank=2, model_inputs=len(inputs)).eval()
    assert len(net.slots) > 50
    adapters = {t: net.init_adapter(seed=i, b_std=0.05) for i, t in enumerate(("sr", "deblur"))}
    with torch.no_grad():
        base = net(*inputs)
        tuned = net(*inputs, *adapters["sr"])
    assert not torch.allclose(base, tuned)
    report = export_adapter_graph(net, inputs, adapters, tmp_path / "unet.onnx")
    assert report["lora_initializers"] == 0 and report["lora_inputs"] == 2 * len(net.slots)
    for task, err in report["per_task"].items():
        assert err["max_rel_error"] < 1e-4, (task, err)
    names = [i.name for i in onnx.load(str(tmp_path / "unet.onnx"), load_external_data=False).graph.input]
    assert names[:3] == ["input_0", "input_1", "input_2"] and names[3].startswith("lora.")
