"""One ONNX graph for every task (adapters as inputs), its QDQ form, encodings, bytes.

* :func:`export_adapter_graph` -- the float graph through :func:`nasframe.deploy.export_module`;
  then, for every task, ONNX Runtime fed that task's adapter vs the PyTorch model with
  the adapter merged into its weights (max abs error per task).
* :func:`export_qdq` -- the QDQ (QuantizeLinear/DequantizeLinear) graph, calibrated with
  every task's adapter (the shared profile), adapter inputs 8-bit symmetric; runs in
  ONNX Runtime as integer kernels.
* :func:`qdq_encodings` -- that graph's profile as an AIMET-layout encodings file.
* :func:`deploy_bytes` -- bytes on the device: one graph + N adapters vs N merged models.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
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


#: ops whose output ONNX Runtime's quantiser quantises like their input
PASS_THROUGH = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def layer_of(initializer: str) -> str | None:
    """The model layer an exported weight or adapter tensor belongs to:
    ``net.<layer>[.base].weight`` and ``lora.<layer>.A|B`` -> ``<layer>``."""
    if initializer.startswith("lora.") and initializer.endswith((".A", ".B")):
        return initializer[len("lora."):-2]
    if initializer.startswith("net.") and initializer.endswith(".weight"):
        return initializer[len("net."):-len(".weight")].removesuffix(".base")
    return None


def qdq_overrides(model, bits: Callable[[str], tuple[int, int]] | None) -> dict[str, list[dict]]:
    """ONNX Runtime ``TensorQuantOverrides`` for an exported adapter graph ``model``
    (an ``onnx.ModelProto``): adapter inputs int8 symmetric per tensor; and, with
    ``bits(layer) -> (weight_bits, activation_bits)``, each Conv/Gemm/MatMul's weight at
    its layer's weight bits (int4 or int8, symmetric) and its input activation at its
    layer's activation bits (uint8 or uint16; a tensor read by layers of different
    widths takes the widest)."""
    from onnxruntime.quantization import QuantType

    names = [i.name for i in model.graph.input]
    out: dict[str, list[dict]] = {n: [{"quant_type": QuantType.QInt8, "symmetric": True}]
                                  for n in names if n.startswith("lora.")}
    if bits is None:
        return out
    inits = {i.name for i in model.graph.initializer}
    act_bits: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        layer = layer_of(node.input[1])
        if layer is None:
            continue
        w, a = bits(layer)
        if node.input[1] in inits:
            out[node.input[1]] = [{"quant_type": QuantType.QInt4 if w == 4 else QuantType.QInt8,
                                   "symmetric": True, "axis": 0}]
        act = node.input[0]
        if act not in inits and not act.startswith("lora."):
            act_bits[act] = max(act_bits.get(act, 8), a)
    # ops that pass their input's quantisation through (ORT's quantiser gives their output
    # the input's parameters): the width must be set where the tensor is made
    producer = {o: n for n in model.graph.node for o in n.output}
    for act, a in list(act_bits.items()):
        node = producer.get(act)
        while node is not None and node.op_type in PASS_THROUGH and node.input[0] not in inits:
            up = node.input[0]
            act_bits[up] = max(act_bits.get(up, 8), a)
            node = producer.get(up)
    for act, a in act_bits.items():
        if a == 16:
            out[act] = [{"quant_type": QuantType.QUInt16}]
    return out


def export_qdq(float_path: str | Path, out_path: str | Path,
               feeds: Sequence[dict[str, np.ndarray]], activation_bits: int = 8,
               bits: Callable[[str], tuple[int, int]] | None = None) -> Path:
    """Quantise the adapter graph to QDQ with ONNX Runtime's static quantiser.

    ``feeds`` must hold every task's adapter (with inputs): min/max calibration over
    all of them gives ONE shared profile. Weights: per-channel symmetric int8;
    activations: asymmetric ``activation_bits`` (8 or 16); adapter inputs: int8
    symmetric, per tensor (they fill the weight slot of a convolution). With ``bits``
    (``layer -> (weight_bits, activation_bits)``, e.g. a ``quad`` architecture's
    per-block w8a8/w8a16/w4a16), each layer takes its own widths (:func:`qdq_overrides`)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    overrides = qdq_overrides(onnx.load(str(float_path), load_external_data=False), bits)
    act = {8: QuantType.QUInt8, 16: QuantType.QUInt16}[activation_bits]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                    extra_options={"TensorQuantOverrides": overrides})
    return out_path


def qdq_encodings(qdq_path: str | Path, out: str | Path) -> dict[str, Any]:
    """The profile of a QDQ graph as an AIMET-layout (1.0.0) encodings file: one entry
    per quantised tensor (graph-input adapters among the activations, as AIMET has them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    P = onnx.TensorProto
    widths = {P.INT4: (4, True), P.UINT4: (4, False), P.INT8: (8, True), P.UINT8: (8, False),
              P.INT16: (16, True), P.UINT16: (16, False), P.INT32: (32, True)}
    zp_type = {i.name: widths.get(i.data_type) for i in model.graph.initializer}
    acts, params = [], []
    seen = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        name, scale, zp = node.input[0], inits.get(node.input[1]), inits.get(node.input[2])
        if scale is None or zp is None or name in seen:
            continue
        if node.op_type == "DequantizeLinear":
            if name not in inits:      # the Q->DQ pair of an activation: counted at its Q
                continue
            name = name.removesuffix("_quantized")   # a pre-quantised weight
        seen.add(name)
        bits, signed = zp_type.get(node.input[2]) or (zp.dtype.itemsize * 8, zp.dtype.kind == "i")
        zps = np.atleast_1d(zp).astype(np.int64)
        entry = {"name": name, "bw": int(bits), "dtype": "INT",
                 "enc_type": "PER_CHANNEL" if np.size(scale) > 1 else "PER_TENSOR",
                 "is_sym": bool(signed and not zps.any()),
                 "scale": [float(s) for s in np.atleast_1d(scale)],
                 # AIMET's offset: on an unsigned grid, -zero_point
                 "offset": [int(z) - 2 ** (bits - 1) if signed else -int(z) for z in zps]}
        (params if node.op_type == "DequantizeLinear" else acts).append(entry)
    doc = {"version": ENCODING_VERSION, "producer": "nasframe quad (onnxruntime QDQ)",
           "activation_encodings": acts, "param_encodings": params}
    Path(out).write_text(json.dumps(doc, indent=1))
    return doc


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
