"""Built-in search spaces, registered through the ``nasframe`` entry point like any plugin."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import hookimpl

if TYPE_CHECKING:
    from nasframe.registry import OpHandles, Registry


@hookimpl
def register_search_spaces(registry: Registry) -> None:
    from nasframe_search_spaces.denoiser import ConvDenoiserSpace
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace
    from nasframe_search_spaces.quad.space import QuadSpace
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    registry.add(ConvDenoiserSpace)
    registry.add(HybridUNetSpace)
    registry.add(SDUNetSpace)
    registry.add(QuadSpace)


@hookimpl
def register_op_handles(handles: OpHandles) -> None:
    """hybrid_unet's selective scan (its own op, and mamba-ssm's CUDA kernel)."""
    from nasframe_search_spaces.hybrid_unet.opcount import SCAN_OPS, selective_scan_macs

    for op in SCAN_OPS:
        handles.add(op, selective_scan_macs)
