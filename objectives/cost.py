"""Cost proxies computed from the built model: parameter count and MACs.

``gmacs`` traces the model with fvcore and counts multiply-accumulates (fvcore
counts one fused multiply-add as one "flop", i.e. one MAC). fvcore misses some
heavy ops; handles for them live in :data:`OP_HANDLES`, which other plugins
extend with :func:`register_op_handle` (an ``autograd.Function`` shows up in
the trace as ``prim::PythonOp.<ClassName>``)::

    from objectives.cost import register_op_handle

    def selective_scan_macs(inputs, outputs):  # inputs/outputs: torch._C.Value
        ...
    register_op_handle("prim::PythonOp.SelectiveScanFn", selective_scan_macs)
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from nasframe import Objective, Value
from objectives._common import check_part, check_shape, input_shapes, model_mode, require_part

if TYPE_CHECKING:

    from nasframe import Candidate, Context, SearchSpace

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


def selective_scan_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of a selective scan traced as ``prim::PythonOp.SelectiveScan`` (the
    ``hybrid_unet`` SSM block; inputs ``x (b, L, h, p)``, ``dt``, ``A``,
    ``B (b, L, g, n)``, ...) or ``prim::PythonOp.SelectiveScanFn`` (mamba-ssm;
    ``u (b, d, L)``, ``delta``, ``A (d, n)``, ...).

    Counts the recurrence itself, per step and channel: ``n`` multiply-adds for the
    state decay, ``n`` for the input injection, ``n`` for the read-out and 1 for
    the skip ``D``: ``b * L * d * (3n + 1)``. The exponentials of the decay and the
    softplus of ``dt`` are elementwise and not counted; nor is the extra work of a
    chunked (state-space-duality) evaluation, which is an implementation choice.
    """
    x = _shape(inputs[0])
    a = _shape(inputs[2])
    b_shape = _shape(inputs[3])
    if x is None or b_shape is None:
        raise ValueError("selective scan: input shapes unknown in the trace")
    if len(x) == 4:                       # (b, L, h, p), B (b, L, g, n)
        b, length, h, p = x
        return b * length * h * p * (3 * b_shape[-1] + 1)
    b, d, length = x                      # mamba-ssm: u (b, d, L), A (d, n)
    n = a[-1] if a else b_shape[-2]
    return b * d * length * (3 * n + 1)


#: Extra fvcore handles, by traced op name; applied on top of fvcore's defaults.
OP_HANDLES: dict[str, OpHandle] = {
    "aten::scaled_dot_product_attention": sdpa_macs,
    "aten::_native_multi_head_attention": native_mha_macs,
    "prim::PythonOp.SelectiveScan": selective_scan_macs,
    "prim::PythonOp.SelectiveScanFn": selective_scan_macs,
}


def register_op_handle(op_name: str, handle: OpHandle) -> None:
    """Count ``op_name`` (a traced op such as ``prim::PythonOp.SelectiveScanFn``)
    with ``handle(inputs, outputs) -> MACs`` in every later ``gmacs`` evaluation.

    Replaces an earlier handle for the same op.
    """
    if not isinstance(op_name, str) or "::" not in op_name:
        raise ValueError(f"op name must look like 'aten::op' or 'prim::PythonOp.Name', got {op_name!r}")
    if not callable(handle):
        raise TypeError(f"handle for {op_name!r} must be callable, got {handle!r}")
    OP_HANDLES[op_name] = handle


GMACS_INCLUDES = (
    "convolutions, linear layers, matmul/bmm/einsum, scaled_dot_product_attention "
    "(B*H*L*S*(E+Ev)), nn.MultiheadAttention fast path, selective scans "
    "(B*L*D*(3N+1): state decay, input, read-out, skip), ops registered in "
    "objectives.cost.OP_HANDLES, and fvcore's per-element estimates for batch/group/"
    "layer/instance norm, upsampling, adaptive average pooling and grid_sample; "
    "excludes other elementwise ops and activations (see unsupported_ops)"
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


class Params(Objective):
    """Number of parameters, in millions.

    Counts every distinct parameter tensor of the model (shared tensors once;
    buffers such as BatchNorm running statistics excluded); with
    ``trainable_only`` only those with ``requires_grad``. The exact integer is
    in ``details['count']``. ``part`` counts that model part of the search
    space (see ``SearchSpace.parts``) instead of the main model.
    """

    name = "params"
    direction = "min"
    kind = "proxy"
    backend = "torch"
    unit = "M"
    cost = 0.1

    def __init__(self, trainable_only: bool = False, part: str | None = None):
        if not isinstance(trainable_only, bool):
            raise ValueError(f"params.params.trainable_only must be true or false, got {trainable_only!r}")
        self.trainable_only = trainable_only
        self.part = check_part(part, "params.params.part")

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        require_part(space, self.part, "params.params.part")

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        params = candidate.module(self.part).parameters()
        count = sum(p.numel() for p in params if p.requires_grad or not self.trainable_only)
        details: dict[str, Any] = {"count": int(count), "trainable_only": self.trainable_only}
        if self.part is not None:
            details["part"] = self.part
        return Value(count / 1e6, details)


class GMACs(Objective):
    """Multiply-accumulates of one forward pass, in billions (fvcore).

    ``input_shape`` is the full input shape including the batch, e.g.
    ``[1, 3, 64, 64]``; by default the search space's ``input_shape`` with
    batch 1. What is counted is listed in ``details['includes']``; ops fvcore
    could not count are in ``details['unsupported_ops']`` ({op: calls}).
    ``part`` counts that model part of the search space (see
    ``SearchSpace.parts``) on its own example inputs instead of the main model.
    """

    name = "gmacs"
    direction = "min"
    kind = "proxy"
    backend = "fvcore"
    unit = "GMACs"
    cost = 1.0

    def __init__(self, input_shape: list[int] | None = None, part: str | None = None):
        self.input_shape = check_shape(input_shape, "gmacs.params.input_shape")
        self.part = check_part(part, "gmacs.params.part")

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        require_part(space, self.part, "gmacs.params.part")

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch
        from fvcore.nn import FlopCountAnalysis

        inputs = candidate.example_inputs(self.input_shape, part=self.part)
        model = candidate.module(self.part)
        with torch.no_grad(), model_mode(model, training=False), _mha_fastpath_disabled():
            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle(**OP_HANDLES)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = analysis.total()
            unsupported = dict(sorted(analysis.unsupported_ops().items()))
        details: dict[str, Any] = {
            "macs": int(total),
            "unsupported_ops": unsupported,
            "includes": GMACS_INCLUDES,
            "input_shape": input_shapes(inputs),
        }
        if self.part is not None:
            details["part"] = self.part
        return Value(total / 1e9, details)

