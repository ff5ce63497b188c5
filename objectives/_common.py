"""Helpers shared by the built-in objectives: param checks, model modes, shapes."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nasframe import SearchSpace


def check_shape(shape: Any, where: str) -> list[int] | None:
    """Validate an ``input_shape`` param: None, or a list of positive ints
    including the batch (``where`` names the field in the message)."""
    if shape is None:
        return None
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ValueError(f"{where}: must be a list of positive integers including the batch, "
                         f"e.g. [1, 3, 64, 64]; got {shape!r}")
    return list(shape)


def check_int(value: Any, where: str, minimum: int) -> int:
    """Validate an integer param ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(value: Any, where: str, positive: bool = True) -> float:
    """Validate a (positive) number param."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (positive and value <= 0):
        raise ValueError(f"{where}: must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def check_part(part: Any, where: str) -> str | None:
    """Validate a ``part`` param: None (the main model) or a non-empty string."""
    if part is None:
        return None
    if not isinstance(part, str) or not part.strip():
        raise ValueError(f"{where}: must be the name of a model part of the search space "
                         f"(a non-empty string), got {part!r}")
    return part


def require_part(space: SearchSpace, part: str | None, where: str) -> None:
    """A ConfigError (exit code 2) when ``part`` is given but is not one of ``space.parts()``."""
    if part is None:
        return
    parts = tuple(space.parts())
    if part in parts:
        return
    from nasframe.errors import ConfigError, did_you_mean

    have = (f"available: {', '.join(parts)}" if parts
            else "it has no parts (only the main model; leave `part` out)")
    raise ConfigError(f"{where}: search space '{space.name}' has no model part {part!r}"
                      f"{did_you_mean(part, parts)}; {have}")


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
