"""``tiny_mlp``: small multi-layer perceptrons, ``(B, in_features) -> (B, out_features)``.

A model is ``depth`` hidden blocks ``Linear(-> width)`` + activation, then a
``Linear(width -> out_features)`` head. Every decision is always used, so
every combination is a distinct, valid model: no ``check`` or
``canonicalize`` is needed.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nasframe import Architecture, Categorical, Decision, Integer, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

#: activation name -> ``torch.nn`` class name
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh"}


def _positive_int(param: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{param}` must be a positive integer, got {value!r}")
    return value


class TinyMLPSpace(SearchSpace):
    """MLPs searched over hidden width, depth and activation.

    Params (YAML ``params``): ``widths`` (hidden widths to choose from),
    ``max_depth`` (1 to ``max_depth`` hidden blocks), ``activations`` (a subset
    of relu, gelu, tanh), ``in_features`` and ``out_features``.

    Decisions, in encoding order: ``width`` (categorical), ``depth`` (integer),
    ``activation`` (categorical).
    """

    name = "tiny_mlp"
    input_shape = (16,)

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), max_depth: int = 3,
                 activations: Sequence[str] = ("relu", "gelu", "tanh"),
                 in_features: int = 16, out_features: int = 4):
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise ValueError(f"`widths` must be a non-empty list of positive integers, got {widths!r}")
        self.widths = tuple(_positive_int("widths[]", w) for w in widths)
        self.max_depth = _positive_int("max_depth", max_depth)
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown or not activations or isinstance(activations, str):
            raise ValueError(f"`activations` must be a non-empty list drawn from "
                             f"{', '.join(ACTIVATIONS)}; got {activations!r}")
        self.activations = tuple(activations)
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.input_shape = (self.in_features,)  # per instance: the default example input

    def decisions(self) -> Sequence[Decision]:
        return (
            Categorical("width", self.widths),
            Integer("depth", 1, self.max_depth),
            Categorical("activation", self.activations),
        )

    def reference_architectures(self) -> dict[str, Architecture]:
        """``baseline``: the middle width, two hidden blocks (or fewer if capped), the first activation."""
        return {"baseline": Architecture(width=self.widths[len(self.widths) // 2],
                                         depth=min(2, self.max_depth),
                                         activation=self.activations[0])}

    def _layers(self, arch: Architecture) -> list[tuple[str, int, int]]:
        """``(name, in_features, out_features)`` per Linear layer, head last."""
        width, sizes = arch["width"], [self.in_features] + [arch["width"]] * arch["depth"]
        layers = [(f"hidden_{i}", c_in, width) for i, c_in in enumerate(sizes[:-1])]
        return layers + [("head", sizes[-1], self.out_features)]

    def build(self, arch: Architecture) -> torch.nn.Module:
        from torch import nn

        act = getattr(nn, ACTIVATIONS[arch["activation"]])
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for name, c_in, c_out in self._layers(arch):
            linear = nn.Linear(c_in, c_out)
            blocks[name] = linear if name == "head" else nn.Sequential(linear, act())
        return nn.Sequential(blocks)  # children named as the nodes of graph()

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """A chain ``hidden_0 -> ... -> head``; node attributes ``kind`` (``"linear"``),
        ``in_channels``, ``channels`` (out features), ``resolution`` (None: no spatial
        dimension) and ``activation`` (None for the head)."""
        import networkx as nx

        g = nx.DiGraph()
        layers = self._layers(arch)
        for name, c_in, c_out in layers:
            g.add_node(name, kind="linear", in_channels=c_in, channels=c_out, resolution=None,
                       activation=None if name == "head" else arch["activation"])
        nx.add_path(g, [name for name, _, _ in layers])
        return g
