"""Built-in search spaces, registered through the ``nasframe`` entry point like any plugin."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import hookimpl

if TYPE_CHECKING:
    from nasframe.registry import Registry


@hookimpl
def register_search_spaces(registry: Registry) -> None:
    from search_spaces.denoiser import ConvDenoiserSpace
    from search_spaces.hybrid_unet.space import HybridUNetSpace
    from search_spaces.sd_unet.space import SDUNetSpace

    registry.add(ConvDenoiserSpace)
    registry.add(HybridUNetSpace)
    registry.add(SDUNetSpace)
