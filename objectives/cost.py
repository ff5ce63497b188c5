"""Cost proxies computed from the built model: parameter count and MACs.

``gmacs`` traces the model with fvcore and counts multiply-accumulates (fvcore
counts one fused multiply-add as one "flop", i.e. one MAC). fvcore misses some
heavy ops: this plugin counts attention (SDPA and ``nn.MultiheadAttention``'s
fast path) itself, and plugins whose models contain custom ops register a
handle for them with the ``register_op_handles`` hook (an
``autograd.Function`` shows up in the trace as ``prim::PythonOp.<ClassName>``)::

    @hookimpl
    def register_op_handles(handles):
        handles.add("prim::PythonOp.SelectiveScanFn", selective_scan_macs)
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from nasframe import Value
from nasframe.params import Bool, Shape
from nasframe_objectives._common import PartObjective, PartParams, input_shapes, model_mode

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context

#: A fvcore op handle: ``handle(inputs, outputs) -> MACs`` where ``inputs`` and
#: ``outputs`` are the traced node's ``torch._C.Value`` lists.
OpHandle = Callable[[list[Any], list[Any]], float]


def _shape(value: Any) -> list[int] | None:
    """The static shape of a traced ``torch._C.Value``, or None when unknown."""
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::scaled_dot_product_attention``.

    ``q``: (..., L, E), ``k``: (..., S, E), ``v``: (..., S, Ev), where ``...`` is
    (B, H) or (B,). Counts ``Q @ K^T`` (L*S*E per batch-head) and ``P @ V``
    (L*S*Ev), i.e. ``prod(...) * L * S * (E + Ev)``; the softmax, scaling and
    masking are elementwise and not counted; a causal mask is not discounted.
    With grouped-query attention the batch-head count is taken from ``q``.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    if q is None or k is None or v is None:
        raise ValueError("scaled_dot_product_attention: input shapes unknown in the trace")
    *batch, length, e = q
    s, ev = k[-2], v[-1]
    return math.prod(batch) * length * s * (e + ev)


def native_mha_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::_native_multi_head_attention`` (the eval/no-grad fast path
    of ``nn.MultiheadAttention``, batch-first).

    ``query``: (B, L, D), ``key``/``value``: (B, S, D). Counts the Q/K/V input
    projections (B*L*D*D + 2*B*S*D*D), the attention products over all heads
    (B*L*S*2D, as :func:`sdpa_macs`) and the output projection (B*L*D*D).
    """
    q, k = _shape(inputs[0]), _shape(inputs[1])
    if q is None or k is None:
        raise ValueError("_native_multi_head_attention: input shapes unknown in the trace")
    *batch, length, d = q
    s = k[-2]
    b = math.prod(batch)
    return b * (length * d * d + 2 * s * d * d + length * s * 2 * d + length * d * d)


#: Handles of the ops this plugin counts itself, by traced op name.
OP_HANDLES: dict[str, OpHandle] = {
    "aten::scaled_dot_product_attention": sdpa_macs,
    "aten::_native_multi_head_attention": native_mha_macs,
}


GMACS_INCLUDES = (
    "convolutions, linear layers, matmul/bmm/einsum, scaled_dot_product_attention "
    "(B*H*L*S*(E+Ev)), nn.MultiheadAttention fast path, the custom ops plugins register "
    "handles for (see handled_ops; e.g. selective scans, B*L*D*(3N+1)), and fvcore's "
    "per-element estimates for batch/group/layer/instance norm, upsampling, adaptive average "
    "pooling and grid_sample; excludes other elementwise ops and activations (see unsupported_ops)"
)


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """Trace ``nn.MultiheadAttention``/``TransformerEncoderLayer`` through their
    plain path (linear + SDPA), which fvcore counts op by op."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class Params(PartObjective):
    """Number of parameters, in millions.

    Counts every distinct parameter tensor of the model (shared tensors once;
    buffers such as BatchNorm running statistics excluded); with
    ``trainable_only`` only those with ``requires_grad``. The exact integer is
    in ``details['count']``. ``part`` counts that model part of the search
    space instead of the main model.
    """

    name = "params"
    direction = "min"
    kind = "proxy"
    backend = "torch"
    unit = "M"
    cost = 0.1

    class Params(PartParams):
        trainable_only: Bool = False
        """Count only parameters with requires_grad."""

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        params = candidate.module(self.part).parameters()
        trainable_only = self.params.trainable_only
        count = sum(p.numel() for p in params if p.requires_grad or not trainable_only)
        details: dict[str, Any] = {"count": int(count), "trainable_only": trainable_only}
        if self.part is not None:
            details["part"] = self.part
        return Value(count / 1e6, details)


class GMACs(PartObjective):
    """Multiply-accumulates of one forward pass, in billions (fvcore).

    ``input_shape`` is the full input shape including the batch, e.g.
    ``[1, 3, 64, 64]``; by default the search space's ``input_shape`` with
    batch 1. What is counted is listed in ``details['includes']`` and the
    custom ops counted by a plugin's handle in ``details['handled_ops']``; ops
    fvcore could not count are in ``details['unsupported_ops']`` ({op: calls}).
    ``part`` counts that model part of the search space on its own example
    inputs instead of the main model.
    """

    name = "gmacs"
    direction = "min"
    kind = "proxy"
    backend = "fvcore"
    unit = "GMACs"
    cost = 1.0
    dependencies = ("fvcore",)
    install_hint = "pip install 'nasframe[macs]'"

    class Params(PartParams):
        input_shape: Shape | None = None
        """Full input shape, batch included, e.g. [1, 3, 64, 64] (default: the space's, batch 1)."""

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        inputs = candidate.example_inputs(self.params.input_shape, part=self.part)
        model = candidate.module(self.part)
        total, unsupported, by_op = count_macs(model, inputs, ctx.op_handles)
        details: dict[str, Any] = {
            "macs": int(total),
            "unsupported_ops": unsupported,
            "handled_ops": sorted(k for k in ctx.op_handles if by_op.get(_short_op(k))),
            "includes": GMACS_INCLUDES,
            "input_shape": input_shapes(inputs),
        }
        if self.part is not None:
            details["part"] = self.part
        return Value(total / 1e9, details)


def count_macs(model: torch.nn.Module, inputs: tuple[Any, ...],
               handles: dict[str, OpHandle] | None = None) -> tuple[int, dict[str, int], dict[str, int]]:
    """fvcore's count of one forward pass of ``model`` on ``inputs`` (eval mode, no grad,
    attention through its plain path) with this plugin's op handles and ``handles``:
    ``(MACs, unsupported ops {op: calls}, MACs by operator)``. What :class:`GMACs`
    reports; other plugins count their models' pieces with it."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad(), model_mode(model, training=False), _mha_fastpath_disabled():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**{**(handles or {}), **OP_HANDLES})
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = analysis.total()
        unsupported = dict(sorted(analysis.unsupported_ops().items()))
        by_op = dict(analysis.by_operator())
    return int(total), unsupported, by_op


def _short_op(name: str) -> str:
    """fvcore's by_operator key for a traced op name (``aten::conv`` -> ``conv``)."""
    return name.split("::", 1)[-1]
