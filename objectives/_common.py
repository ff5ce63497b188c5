"""Helpers shared by the built-in objectives: the ``part`` param, model modes, shapes."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nasframe import Objective
from nasframe.capabilities import Capability, ModelParts
from nasframe.errors import did_you_mean
from nasframe.params import Field, Params

if TYPE_CHECKING:
    import torch

    from nasframe import SearchSpace


class PartParams(Params):
    part: str | None = Field(None, min_length=1, max_length=128, pattern=r"^\S+$")
    """Score this model part of the search space (e.g. vae_decoder) instead of the main model."""


class PartObjective(Objective):
    """An objective with a ``part`` param: it then requires the space's model parts
    and checks, at validation, that the part exists."""

    Params = PartParams

    @property
    def part(self) -> str | None:
        return self.params.part

    def requirements(self) -> tuple[type[Capability], ...]:
        reqs = super().requirements()
        return (*reqs, ModelParts) if self.part is not None else reqs

    def check_space(self, space: SearchSpace) -> str | None:
        if self.part is None or not isinstance(space, ModelParts):
            return None
        parts = tuple(space.parts())
        if self.part in parts:
            return None
        return (f"params.part: search space '{space.name}' has no model part {self.part!r}"
                f"{did_you_mean(self.part, parts)}; available: {', '.join(parts)}")


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, training: bool) -> Iterator[torch.nn.Module]:
    """Put ``model`` in train or eval mode, restoring each submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


def input_shapes(inputs: Sequence[Any]) -> list[int] | list[list[int]] | None:
    """The shape of a single tensor input, or the list of shapes of several."""
    import torch

    shapes = [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else shapes
