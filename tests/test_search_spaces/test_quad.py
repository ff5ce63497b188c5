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


def _dq_types(path) -> dict[str, int]:
    """{quantised tensor: ONNX element type of its zero point} of a QDQ graph."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {n.input[0].removesuffix("_quantized"): inits[n.input[2]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits}


def test_qdq_graph_takes_each_blocks_bit_widths(tmp_path):
    """Per-block w4a16 / w8a16 / w8a8 reach the QDQ graph: int4 or int8 weights, uint16 or
    uint8 inputs, int8 adapters; the encodings file says the same widths."""
    import onnx

    from nasframe_search_spaces.quad.deploy import (export_adapter_graph, export_qdq, feed,
                                                    layer_of, qdq_encodings)

    space = QuadSpace(preset="tiny", granularity="stage", ranks=[2], input_size=16)
    arch = space.reference_architectures()["largest"].replace(bits_enc1="w4a16", bits_latent="w8a16",
                                                               bits_dec1="w8a8")
    net = space.build(arch).eval()
    x = torch.rand(1, 3, 16, 16)
    export_adapter_graph(net, x, net.task_adapters, tmp_path / "g.onnx")
    q = export_qdq(tmp_path / "g.onnx", tmp_path / "q.onnx",
                   [feed(net, x, a) for a in net.task_adapters.values()],
                   bits=lambda layer: space.bits_of(arch, layer))
    T = onnx.TensorProto
    types = _dq_types(q)
    graph = onnx.load(str(q))
    convs = [(n.input[0], n.input[1]) for n in graph.graph.node if n.op_type == "Conv"]
    # a Conv of the QDQ graph reads DequantizeLinear outputs: map them back to what they dequantise
    producer = {o: n.input[0].removesuffix("_quantized") for n in graph.graph.node
                if n.op_type == "DequantizeLinear" for o in n.output}
    checked = {4: 0, 8: 0, 16: 0}
    for act, weight in convs:
        w_name, a_name = producer.get(weight), producer.get(act)
        layer = layer_of(w_name or "")
        if layer is None or not w_name.startswith("net."):
            continue
        w, a = space.bits_of(arch, layer)
        assert types[w_name] == (T.INT4 if w == 4 else T.INT8), w_name
        # the activation producer's type: uint16 where any reader is a16, else uint8
        if a == 16:
            assert types[a_name] == T.UINT16, (layer, a_name)
        checked[w] += 1
        checked[16] += a == 16
    assert checked[4] and checked[8] and checked[16]
    assert all(v == T.INT8 for k, v in types.items() if k.startswith("lora."))
    enc = qdq_encodings(q, tmp_path / "q.encodings")
    assert {e["bw"] for e in enc["param_encodings"]} >= {4, 8}
    assert {e["bw"] for e in enc["activation_encodings"]} == {8, 16}


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
