"""A candidate: one architecture under evaluation, its model built lazily once."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nasframe.architecture import Architecture

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.space import SearchSpace


class Candidate:
    """What objectives see. ``model`` and ``graph`` are built on first access
    (seeded by the trial's seed) and shared by every objective of the trial."""

    def __init__(self, space: SearchSpace, arch: Architecture, seed: int = 0):
        self.space = space
        self.arch = arch
        self.seed = seed
        self._model: torch.nn.Module | None = None
        self._graph: nx.DiGraph | None = None
        self.cache: dict[str, Any] = {}  # scratch space shared by the trial's objectives

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = self.space.build(self.arch)
            self._model = model.eval()
        return self._model

    @property
    def model_built(self) -> bool:
        return self._model is not None

    @property
    def graph(self) -> nx.DiGraph:
        if self._graph is None:
            self._graph = self.space.graph(self.arch)
        return self._graph

    def example_inputs(self, input_shape=None, batch_size: int = 1) -> tuple[Any, ...]:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.space.example_inputs(self.arch, input_shape, batch_size)

    def release(self) -> None:
        self._model = None
        self._graph = None
        self.cache.clear()
