"""One ONNX graph for every task (adapters as inputs), its QDQ form, encodings, bytes.

* :func:`export_adapter_graph` -- the float graph through :func:`nasframe.deploy.export_module`;
  then, for every task, ONNX Runtime fed that task's adapter vs the PyTorch model with
  the adapter merged into its weights (max abs error per task).
* :func:`map_profile` -- where each quantisation point of the torch simulation is in the
  exported graph (matched by value on one input);
* :func:`profile_encodings` -- the trained profile under the graph's tensor names, as an
  AIMET-layout encodings file (what AIMET, QNN and AI Hub read);
* :func:`export_qdq` -- the QDQ (QuantizeLinear/DequantizeLinear) graph carrying exactly
  those encodings: the profile QUAD trained against, each block at its bit widths, no
  re-calibration.
* :func:`deploy_bytes` -- bytes on the device: one graph + N adapters vs N merged models.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasframe.deploy import export_module, ort_session
from nasframe_search_spaces.quad.lora import Adapter, LoRANet
from nasframe_search_spaces.quad.quant import ADAPTER_BITS, ENCODING_VERSION


def model_input_names(net: LoRANet) -> list[str]:
    """Graph names of the model's own inputs: ``x``, or ``input_0..`` for several."""
    return ["x"] if net.model_inputs == 1 else [f"input_{i}" for i in range(net.model_inputs)]


def _as_tuple(x) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def feed(net: LoRANet, x, adapter: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """The ONNX Runtime feed of the model input(s) ``x`` and one adapter."""
    return {**{n: t.detach().numpy() for n, t in zip(model_input_names(net), _as_tuple(x))},
            **{n: t.detach().numpy() for n, t in zip(net.input_names(), adapter)}}


def export_adapter_graph(net: LoRANet, example, adapters: dict[str, Adapter],
                         path: str | Path, threads: int | None = 1) -> dict[str, Any]:
    """Export ``net`` once with every A/B tensor as a graph input and check it per task
    (``example``: the model input, or a tuple of them for a net of several ``model_inputs``).

    Returns (and writes to ``<path>.tasks.json``) the export's metadata plus
    ``per_task``: ``{task: {max_abs_error, max_rel_error}}`` of ONNX Runtime fed the
    task's adapter vs the merged PyTorch model, and ``lora_initializers`` (0 when every
    adapter tensor is an input)."""
    import onnx

    first = next(iter(adapters.values()))
    inputs = _as_tuple(example)
    result = export_module(net.eval(), (*inputs, *first), "onnx", path,
                           input_names=[*model_input_names(net), *net.input_names()],
                           threads=threads)
    model = onnx.load(str(path), load_external_data=False)
    lora_inits = sum(i.name.startswith("lora.") for i in model.graph.initializer)
    lora_inputs = sum(i.name.startswith("lora.") for i in model.graph.input)
    sess = ort_session(path, threads)
    per_task = {}
    for task, adapter in adapters.items():
        got = sess.run(None, feed(net, example, adapter))[0]
        with torch.no_grad():
            ref = net.merged(adapter)(*inputs).numpy()
        err = float(np.abs(got - ref).max())
        per_task[task] = {"max_abs_error": err,
                          "max_rel_error": err / max(float(np.abs(ref).max()), 1e-12)}
    report = {**result.to_dict(), "lora_inputs": lora_inputs, "lora_initializers": lora_inits,
              "adapter_params": net.adapter_numel(), "per_task": per_task}
    Path(str(path) + ".tasks.json").write_text(json.dumps(report, indent=1))
    return report


def layer_of(initializer: str) -> str | None:
    """The model layer an exported weight or adapter tensor belongs to:
    ``net.<layer>[.base].weight`` and ``lora.<layer>.A|B`` -> ``<layer>``."""
    if initializer.startswith("lora.") and initializer.endswith((".A", ".B")):
        return initializer[len("lora."):-2]
    if initializer.startswith("net.") and initializer.endswith(".weight"):
        return initializer[len("net."):-len(".weight")].removesuffix(".base")
    return None


# -- the trained profile on the ONNX graph ---------------------------------------------------
def graph_tensors(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float tensor of an ONNX graph (its inputs and every node output) for one feed,
    computed by ONNX Runtime with graph optimisations off (the tensors keep their names)."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            info = known.get(name)
            if (name and name not in outputs and info is not None
                    and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT):
                model.graph.output.append(info)
                outputs.add(name)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feeds)))
    return {**{k: v for k, v in feeds.items() if v.dtype == np.float32}, **got}


def map_profile(sim, path: str | Path, x: torch.Tensor, adapter: Sequence[torch.Tensor],
                rtol: float = 1e-4) -> list[tuple[str, str]]:
    """Where the simulation's quantisation points are in the exported graph ``path``:
    ``[(sim key, ONNX tensor name), ...]`` in the order the simulation quantises them.

    The float model's tensor at every point (:meth:`.quant.QuantSim.record`) is matched by
    shape and value against every tensor of the graph run by ONNX Runtime on the same
    input ``x`` and ``adapter`` (use an adapter with non-zero B, so that no branch is zero and
    two points cannot hold equal values); of equal tensors (a Reshape to the same shape,
    an Identity) the earliest, its producer's, is taken, and a tensor made by moving values
    (a transpose, a reshape) gives its encoding to the tensor it moves when nothing else
    reads that (:func:`_hoist`). A point with no match is an error:
    the graph would not carry the trained profile. Several points may share a tensor (a
    layer's input is its producer's output): :func:`profile_encodings` resolves them."""
    import onnx

    net = sim.net
    seen = sim.record(x, *adapter)
    tensors = graph_tensors(path, feed(net, x, adapter))
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    order = {name: i for i, name in enumerate(tensors)}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, value in tensors.items():
        by_shape.setdefault(tuple(value.shape), []).append(name)
    out: list[tuple[str, str]] = []
    for key, t in seen:
        ref = t.numpy()
        tol = rtol * max(float(np.abs(ref).max()), 1e-6) + 1e-7
        hits = [n for n in by_shape.get(tuple(ref.shape), ())
                if float(np.abs(tensors[n] - ref).max()) <= tol]
        if not hits:
            raise ValueError(f"quantisation point {key!r} (shape {tuple(ref.shape)}) has no "
                             f"tensor of equal value in {path}")
        out.append((key, _hoist(min(hits, key=order.__getitem__), producer, readers)))
    return out


#: ops that only move values: per-tensor quantisation commutes with them
DATA_MOVEMENT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                 "DepthToSpace", "SpaceToDepth")


def _hoist(name: str, producer: dict, readers: dict) -> str:
    """The tensor a point's encoding goes on: ``name``, or -- when ``name`` is made by a
    data-movement op (a LayerNorm2d's transpose back, a reshape) from a tensor nothing else
    reads -- that op's input, recursively. Per-tensor quantisation commutes with moving
    values, so the graph computes the same; the encoding sits on the compute op's output,
    where AIMET and QNN put their quantizers."""
    while True:
        node = producer.get(name)
        if node is None or node.op_type not in DATA_MOVEMENT:
            return name
        src = node.input[0]
        if len(readers.get(src, ())) != 1:
            return name
        name = src


def _weight_axis(node) -> int:
    """The output-channel axis of a Conv / Gemm / MatMul weight (input 1)."""
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans else 1
    return 0


def profile_encodings(profile, mapping: Sequence[tuple[str, str]], path: str | Path,
                      out: str | Path | None = None) -> dict[str, Any]:
    """The trained ``profile`` on the exported graph ``path``, as an AIMET-layout (1.0.0)
    encodings file (written to ``out`` when given): every activation and adapter encoding
    under the ONNX tensor name ``mapping`` gives it (:func:`map_profile`), and every
    Conv/Gemm/MatMul weight of a quantised layer per output channel, symmetric, at the
    layer's weight bits with the scales the simulation used (``max |w| / (2^(b-1) - 1)``
    per channel). Weights of rank < 2 (norms) stay float, as in the simulation.

    A layer that reads a tensor made at other bits (a block at w8a16 feeding a w8a8
    down-sampler) requantises it on the way in: such an input is listed under
    ``requantised_inputs`` (``name`` the tensor, ``layer`` the reader), a key AIMET's
    loader ignores; on the NPU it is a convert op."""
    import onnx
    from onnx import numpy_helper

    from nasframe_search_spaces.quad.quant import _channel_scales

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    acts: dict[str, dict[str, Any]] = {}
    requant: list[dict[str, Any]] = []
    for key, name in mapping:
        entry = profile.encodings[key].to_aimet(name)
        first = acts.setdefault(name, entry)
        if first is entry or first == entry:
            continue          # a layer's input at its producer's encoding: nothing to add
        if not key.endswith(".in"):
            raise ValueError(f"quantisation point {key!r} is tensor {name!r} of {path}, which "
                             f"already has another encoding; one encoding per tensor")
        requant.append({**entry, "layer": key[:-len(".in")]})
    params, done = [], set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = node.input[1]
        layer = layer_of(w)
        if w in done or w not in inits or layer not in profile.weight_bits:
            continue
        value = numpy_helper.to_array(inits[w])
        if value.ndim < 2:
            continue
        bits, axis = profile.weight_bits[layer], _weight_axis(node)
        scales = _channel_scales(torch.from_numpy(np.moveaxis(value, axis, 0).copy()), bits)
        params.append({"name": w, "bw": bits, "dtype": "INT", "enc_type": "PER_CHANNEL",
                       "is_sym": True, "scale": [float(s) for s in scales],
                       "offset": [-(2 ** (bits - 1))] * len(scales)})
        done.add(w)
    doc = {"version": ENCODING_VERSION, "producer": "nasframe quad (trained shared profile)",
           "activation_encodings": list(acts.values()), "param_encodings": params,
           "requantised_inputs": requant,
           "quantizer_args": {"per_channel_quantization": True, "param_type": "int",
                              "activation_type": "int"}}
    if out is not None:
        Path(out).write_text(json.dumps(doc, indent=1))
    return doc


#: (bits, signed) -> ONNX element type of a quantised tensor
def _qtype(bits: int, signed: bool) -> int:
    import onnx

    P = onnx.TensorProto
    types = {(4, True): P.INT4, (4, False): P.UINT4, (8, True): P.INT8, (8, False): P.UINT8,
             (16, True): P.INT16, (16, False): P.UINT16}
    if (bits, signed) not in types:
        raise ValueError(f"{bits}-bit {'signed' if signed else 'unsigned'} tensors have no "
                         "ONNX QuantizeLinear type; use 4, 8 or 16 bits")
    return types[bits, signed]


def _np_qtype(bits: int):
    """The numpy type of a signed ``bits``-bit weight (ml_dtypes' int4 for 4 bits)."""
    if bits == 4:
        import ml_dtypes

        return ml_dtypes.int4
    return {8: np.int8, 16: np.int16}[bits]


def _qparams(entry: dict[str, Any]) -> tuple[float, int, int]:
    """(scale, zero point, ONNX type) of a per-tensor AIMET-layout encoding."""
    sym, bits = bool(entry["is_sym"]), int(entry["bw"])
    zp = 0 if sym else -int(entry["offset"][0])
    return float(entry["scale"][0]), zp, _qtype(bits, sym)


def _topological(nodes: list) -> list:
    """``nodes`` in an order where each node follows the producers of its inputs (depth
    first from the graph's nodes in their order: a Q/DQ pair lands next to its tensor)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    state = [0] * len(nodes)          # 0 new, 1 on the stack, 2 placed
    out: list = []
    for root in range(len(nodes)):
        stack = [(root, 0)]
        while stack:
            i, k = stack.pop()
            if k == 0:
                if state[i]:
                    continue
                state[i] = 1
            inputs = [producer[x] for x in nodes[i].input if x in producer]
            if k < len(inputs):
                stack.append((i, k + 1))
                if not state[inputs[k]]:
                    stack.append((inputs[k], 0))
                continue
            state[i] = 2
            out.append(nodes[i])
    return out


#: QuantizeLinear/DequantizeLinear take 4- and 16-bit types from this opset on
QDQ_OPSET = 21


def export_qdq(path: str | Path, out_path: str | Path, encodings: dict[str, Any]) -> Path:
    """The QDQ graph of the float graph ``path`` with exactly the given ``encodings``
    (:func:`profile_encodings`): no calibration, nothing else quantised.

    * each activation (and adapter input) ``t``: ``QuantizeLinear -> DequantizeLinear``
      with a scalar scale and zero point (uint8/uint16 asymmetric, int8/int16
      symmetric), every reader of ``t`` reading the dequantised tensor; a graph output
      keeps its name (its producer writes ``t_QuantizeLinear_Input``);
    * each weight: stored quantised (int8 or int4) with a per-channel scale and a zero
      point of the same shape, ``DequantizeLinear`` along its output-channel axis.

    The tensors of the simulation that are not quantised (attention internals, the
    GELU gate, norms' parameters) stay float: on an NPU they run in fp16, as they ran in
    float when QUAD trained against the profile. Opset raised to 21 (4/16-bit Q/DQ)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < QDQ_OPSET:
            imp.version = QDQ_OPSET
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    outputs = {o.name for o in g.output}
    producer_of = {o: n for n in g.node for o in n.output}
    new_nodes: list[tuple[str | None, Any]] = []       # (insert after tensor, node)
    quantised: set[str] = set()

    def rewire(name: str, new: str) -> None:
        for node, i in readers.get(name, []):
            node.input[i] = new

    for e in encodings["activation_encodings"]:
        t = e["name"]
        scale, zp, qt = _qparams(e)
        quantised.add(t)
        g.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), f"{t}_scale"),
            helper.make_tensor(f"{t}_zero_point", qt, [], [zp])])
        src, dq_out = t, f"{t}_DequantizeLinear_Output"
        rewire(t, dq_out)
        if t in outputs:        # the graph output keeps its name: it is the DQ's output
            src = f"{t}_QuantizeLinear_Input"
            producer = producer_of[t]
            producer.output[list(producer.output).index(t)] = src
            rewire(src, dq_out)
            dq_out = t
        q = helper.make_node("QuantizeLinear", [src, f"{t}_scale", f"{t}_zero_point"],
                             [f"{t}_QuantizeLinear_Output"], name=f"{t}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{t}_QuantizeLinear_Output", f"{t}_scale",
                                                   f"{t}_zero_point"], [dq_out],
                              name=f"{t}_DequantizeLinear")
        new_nodes.append((src, [q, dq]))
    layer_nodes: dict[str, list] = {}
    for node in g.node:
        for name in node.input[1:2]:
            if layer_of(name) is not None:
                layer_nodes.setdefault(layer_of(name), []).append(node)
    for e in encodings.get("requantised_inputs", []):
        t, layer = e["name"], e["layer"]
        src = f"{t}_DequantizeLinear_Output" if t in quantised else t
        tag = f"{t}_{layer}"
        scale, zp, qt = _qparams(e)
        g.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_scale"),
            helper.make_tensor(f"{tag}_zero_point", qt, [], [zp])])
        hit = 0
        for node in layer_nodes.get(layer, []):
            for i, name in enumerate(node.input):
                if name == src:
                    node.input[i] = f"{tag}_DequantizeLinear_Output"
                    hit += 1
        if not hit:
            raise ValueError(f"requantised input {t!r} of layer {layer!r}: no node of that "
                             f"layer reads it in {path}")
        new_nodes.append((src if t not in quantised else f"{t}_DequantizeLinear_Output", [
            helper.make_node("QuantizeLinear", [src, f"{tag}_scale", f"{tag}_zero_point"],
                             [f"{tag}_QuantizeLinear_Output"], name=f"{tag}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{tag}_QuantizeLinear_Output", f"{tag}_scale",
                                                  f"{tag}_zero_point"],
                             [f"{tag}_DequantizeLinear_Output"], name=f"{tag}_DequantizeLinear")]))
    for e in encodings["param_encodings"]:
        w, bits = e["name"], int(e["bw"])
        if w not in inits:
            raise ValueError(f"param encoding {w!r}: no such initialiser in {path}")
        value = numpy_helper.to_array(inits[w])
        node = readers[w][0][0]
        axis = _weight_axis(node)
        scale = np.asarray(e["scale"], np.float32)
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        shape = [1] * value.ndim
        shape[axis] = -1
        q = np.clip(np.round(value / scale.reshape(shape)), lo, hi)
        dtype = _np_qtype(bits)           # packed raw data: int4 two to a byte
        g.initializer.extend([
            numpy_helper.from_array(q.astype(dtype), f"{w}_quantized"),
            numpy_helper.from_array(scale, f"{w}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), dtype), f"{w}_zero_point")])
        g.initializer.remove(inits[w])
        rewire(w, f"{w}_DequantizeLinear_Output")
        new_nodes.append((None, [helper.make_node(
            "DequantizeLinear", [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"],
            [f"{w}_DequantizeLinear_Output"], name=f"{w}_DequantizeLinear", axis=axis)]))
    # keep the node list topologically sorted: each Q/DQ pair right after its tensor's producer
    nodes = [*g.node, *(n for _, pair in new_nodes for n in pair)]
    del g.node[:]
    g.node.extend(_topological(nodes))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path


def ship_profile(sim, profile, float_path: str | Path, out_path: str | Path,
                 encodings_path: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The deployable QDQ graph of ``sim``'s network with ``profile`` (the one QUAD trained
    against): map the simulation's points onto ``float_path`` (its export), write the
    encodings under the graph's tensor names (``encodings_path``) and the QDQ graph
    (``out_path``). Returns the encodings."""
    net = sim.net
    g = torch.Generator().manual_seed(seed)
    shape = _graph_input_shape(float_path)
    x = torch.rand(shape, generator=g)
    mapping = map_profile(sim, float_path, x, net.init_adapter(seed + 1, b_std=0.1))
    enc = profile_encodings(profile, mapping, float_path, encodings_path)
    export_qdq(float_path, out_path, enc)
    return enc


def _graph_input_shape(path: str | Path) -> list[int]:
    import onnx

    first = onnx.load(str(path), load_external_data=False).graph.input[0]
    return [d.dim_value or 1 for d in first.type.tensor_type.shape.dim]


def aimet_sim(path: str | Path, encodings: dict[str, Any] | str | Path):
    """An ``aimet_onnx`` ``QuantizationSimModel`` of the float graph ``path`` with the
    bundle's ``encodings`` loaded by AIMET's own ``load_encodings_to_sim(..., strict=True)``:
    the quantizers of the tensors the encodings name are enabled (each its own, as in
    AIMET's ``from_onnx_qdq``) at their bit widths, symmetry and granularity, the others
    disabled (they stay float in the deployed graph);
    strict loading then checks every name against the graph and every setting against its
    quantizer. Needs aimet-onnx (``pip install --no-deps aimet-onnx==2.42.0``, see
    docs/quad.md). Requantised layer inputs (``requantised_inputs``) have no per-tensor
    form in AIMET's file and are not in this sim."""
    import onnx
    from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim

    if not isinstance(encodings, dict):
        encodings = json.loads(Path(encodings).read_text())
    sim = QuantizationSimModel(onnx.load(str(path)), param_type="int8", activation_type="int8")
    wanted = {e["name"]: e for e in (*encodings["activation_encodings"],
                                     *encodings["param_encodings"])}
    # one quantizer per named tensor (AIMET ties a Concat's output to an input; the
    # deployed graph gives each its own encoding), as AIMET's from_onnx_qdq does
    sim.set_quantizers({name: q._copy() if name in wanted else q      # noqa: SLF001
                        for name, q in sim.qc_quantize_op_dict.items()})
    for name, q in sim.qc_quantize_op_dict.items():
        e = wanted.get(name)
        q.enabled = e is not None
        if e is None:
            continue
        q.set_bitwidth(int(e["bw"]))
        q.use_symmetric_encodings = bool(e["is_sym"])
        if e["enc_type"] == "PER_CHANNEL" and q._encoding_type().name != "PER_CHANNEL":   # noqa: SLF001
            q.enable_per_channel_quantization()
    load_encodings_to_sim(sim, {k: encodings[k] for k in ("version", "activation_encodings",
                                                          "param_encodings")}, strict=True)
    return sim


#: the Snapdragon 8 Elite's HTP (QNN ``soc_model`` 69, ``htp_arch`` 79)
HTP_SOC = {"soc_model": "69", "htp_arch": "79"}


def htp_session(path: str | Path, fp16: bool = True, verbose: bool = False):
    """An ONNX Runtime session of ``path`` on onnxruntime-qnn's HTP backend (the Hexagon NPU,
    emulated on x86), CPU fallback off: it opens only if every node compiles for the NPU
    (``verbose``: the EP's log, e.g. the unsupported nodes). Float ops left in a QDQ graph
    run in fp16 (``fp16``). A stop-gap until nasframe's own NPU check lands."""
    import onnxruntime as ort
    import onnxruntime_qnn

    name = onnxruntime_qnn.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    opts = ort.SessionOptions()
    # quiet: the EP logs its first partitioning pass (before ORT's layout transformation)
    # as errors even when the final graph compiles; a graph that does not raises below
    opts.log_severity_level = 1 if verbose else 4
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    opts.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                            **HTP_SOC,
                                            "enable_htp_fp16_precision": "1" if fp16 else "0"})
    return ort.InferenceSession(str(path), sess_options=opts)


# -- bytes on the device ------------------------------------------------------------------
def deploy_bytes(net: LoRANet, weight_bits: dict[str, int], n_tasks: int) -> dict[str, float]:
    """Bytes of N tasks on a device: ``shared`` = one quantised graph (base weights at
    their bit widths, other parameters 32-bit) + N adapters (8-bit, one 32-bit scale per
    tensor) vs ``separate`` = N merged quantised models; and their ratio."""
    base = 0.0
    for name, p in net.net.named_parameters():
        layer = name.rsplit(".", 1)[0].removesuffix(".base")
        if name.endswith(".weight") and layer in weight_bits:
            base += p.numel() * weight_bits[layer] / 8 + 4 * p.shape[0]   # + per-channel scales
        else:
            base += 4 * p.numel()
    adapter = sum(math.prod(s.a_shape) + math.prod(s.b_shape) for s in net.slots) \
        * ADAPTER_BITS / 8 + 2 * 4 * len(net.slots)
    shared = base + n_tasks * adapter
    separate = n_tasks * base
    return {"shared_bytes": shared, "separate_bytes": separate, "base_bytes": base,
            "adapter_bytes": adapter, "ratio": separate / shared, "tasks": n_tasks}
