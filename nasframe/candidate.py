"""A candidate: one architecture under evaluation, its model built lazily once."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nasframe.architecture import Architecture
from nasframe.capabilities import ModelParts

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.pruning import Pruning
    from nasframe.space import SearchSpace


class Candidate:
    """What objectives see. ``model`` and ``graph`` are built on first access
    (seeded by the trial's seed) and shared by every objective of the trial;
    so are the space's extra model parts (:meth:`part`)."""

    def __init__(self, space: SearchSpace, arch: Architecture, seed: int = 0,
                 pruning: Pruning | None = None):
        self.space = space
        self.arch = arch
        self.seed = seed
        #: this trial's intermediate values and pruner (:mod:`nasframe.pruning`)
        self.pruning = pruning
        self._model: torch.nn.Module | None = None
        self._graph: nx.DiGraph | None = None
        self._parts: dict[str, torch.nn.Module] = {}
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

    def part(self, name: str | None) -> torch.nn.Module:
        """Part ``name`` of the space (see :meth:`SearchSpace.parts`), built on first
        use like :attr:`model` (seeded, eval mode) and cached; None: the main model."""
        if name is None:
            return self.model
        if not isinstance(self.space, ModelParts):
            raise ValueError(f"search space '{self.space.name}' has no model parts (asked for {name!r})")
        if name not in self._parts:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                module = self.space.build_part(self.arch, name)
            self._parts[name] = module.eval()
        return self._parts[name]

    def module(self, part: str | None = None) -> torch.nn.Module:
        """The main model, or part ``part`` when given."""
        return self.model if part is None else self.part(part)

    @property
    def graph(self) -> nx.DiGraph:
        if self._graph is None:
            self._graph = self.space.graph(self.arch)
        return self._graph

    def example_inputs(self, input_shape=None, batch_size: int = 1,
                       part: str | None = None) -> tuple[Any, ...]:
        """Seeded inputs for one forward pass of the main model, or of ``part``."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if part is not None:
                if not isinstance(self.space, ModelParts):
                    raise ValueError(f"search space '{self.space.name}' has no model parts "
                                     f"(asked for {part!r})")
                return self.space.part_example_inputs(self.arch, part, input_shape, batch_size)
            return self.space.example_inputs(self.arch, input_shape, batch_size)

    # -- multi-fidelity --------------------------------------------------------
    def report(self, value: float, step: int) -> None:
        """An intermediate value of the objective being evaluated after ``step`` units of
        work (e.g. PSNR after ``step`` fine-tuning steps)."""
        if self.pruning is not None:
            self.pruning.report(value, step)

    def should_prune(self) -> bool:
        """True when the experiment's pruner says this trial should stop now: raise
        :class:`nasframe.TrialPruned` (the trial keeps its last reported value)."""
        return self.pruning is not None and self.pruning.should_prune()

    def release(self) -> None:
        self._model = None
        self._graph = None
        self._parts.clear()
        self.cache.clear()
