"""MAC counting of the selective scan, registered with ``register_op_handles``.

Under ``torch.jit.trace`` (fvcore's counter) the scan of :mod:`.scan` is one op,
``prim::PythonOp.SelectiveScan``; mamba-ssm's CUDA kernel is
``prim::PythonOp.SelectiveScanFn``. Both are counted by the recurrence's own
formula (:func:`.scan.scan_macs`), whatever the backend.
"""
from __future__ import annotations

from typing import Any

#: the ops this plugin owns
SCAN_OPS = ("prim::PythonOp.SelectiveScan", "prim::PythonOp.SelectiveScanFn")


def _shape(value: Any) -> list[int] | None:
    """The static shape of a traced ``torch._C.Value``, or None when unknown."""
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def selective_scan_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of a selective scan traced as ``prim::PythonOp.SelectiveScan`` (inputs
    ``x (b, L, h, p)``, ``dt``, ``A``, ``B (b, L, g, n)``, ...) or
    ``prim::PythonOp.SelectiveScanFn`` (mamba-ssm; ``u (b, d, L)``, ``delta``,
    ``A (d, n)``, ...).

    Counts the recurrence itself, per step and channel: ``n`` multiply-adds for the
    state decay, ``n`` for the input injection, ``n`` for the read-out and 1 for
    the skip ``D``: ``b * L * d * (3n + 1)``. The exponentials of the decay and the
    softplus of ``dt`` are elementwise and not counted; nor is the extra work of a
    chunked (state-space-duality) evaluation, which is an implementation choice.
    """
    from nasframe_search_spaces.hybrid_unet.scan import scan_macs

    x = _shape(inputs[0])
    a = _shape(inputs[2])
    b_shape = _shape(inputs[3])
    if x is None or b_shape is None:
        raise ValueError("selective scan: input shapes unknown in the trace")
    if len(x) == 4:                       # (b, L, h, p), B (b, L, g, n)
        b, length, h, p = x
        return scan_macs(b, length, h * p, b_shape[-1])
    b, d, length = x                      # mamba-ssm: u (b, d, L), A (d, n)
    n = a[-1] if a else b_shape[-2]
    return scan_macs(b, length, d, n)
