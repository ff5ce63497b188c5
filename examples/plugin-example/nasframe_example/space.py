"""``tiny_mlp``: small multi-layer perceptrons, ``(B, in_features) -> (B, out_features)``.

A model is ``depth`` hidden blocks ``Linear(-> width)`` + activation, then a
``Linear(width -> out_features)`` head. Every decision is always used, so
every combination is a distinct, valid model: no ``check`` or
``canonicalize`` is needed.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

from nasframe import Architecture, Categorical, Decision, Field, Integer, Params, SearchSpace
from nasframe.params import Int

if TYPE_CHECKING:
    import networkx as nx
    import torch

#: activation name -> ``torch.nn`` class name
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh"}


class TinyMLPSpace(SearchSpace):
    """MLPs searched over hidden width, depth and activation.

    Params: the nested ``Params`` model below (``nasframe plugins tiny_mlp``
    prints it); the registry validates the YAML against it before the space
    is made, so ``__init__`` only derives what it needs.

    Decisions, in encoding order: ``width`` (categorical), ``depth`` (integer),
    ``activation`` (categorical).
    """

    name = "tiny_mlp"
    input_shape = (16,)

    class Params(Params):
        widths: tuple[Annotated[Int, Field(ge=1, le=4096)], ...] = Field((8, 16, 32, 64), min_length=1)
        """Hidden widths to choose from."""
        max_depth: Int = Field(3, ge=1, le=64)
        """The most hidden blocks (the depth decision is 1..max_depth)."""
        activations: tuple[Literal["relu", "gelu", "tanh"], ...] = Field(("relu", "gelu", "tanh"),
                                                                        min_length=1)
        """Activations to choose from."""
        in_features: Int = Field(16, ge=1, le=65_536)
        """Input features."""
        out_features: Int = Field(4, ge=1, le=65_536)
        """Output features."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)  # validates and sets self.params
        p = self.params
        self.widths, self.max_depth, self.activations = p.widths, p.max_depth, p.activations
        self.in_features, self.out_features = p.in_features, p.out_features
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
