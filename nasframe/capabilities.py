"""Capabilities: what a search space can provide beyond building models.

A capability is a small abstract base class. A search space *declares* one by
subclassing it (and implementing its methods); an objective *requires* one by
listing it in ``requires`` (or returning it from
:meth:`~nasframe.objective.Objective.requirements` when it depends on the
params). ``nasframe validate`` rejects an experiment whose objective needs
what its space lacks, naming both and what is missing; the conformance suite
pairs objectives with spaces by capability; and a space prepares only what the
experiment's objectives need (:meth:`~nasframe.space.SearchSpace.prepare`
receives the set)::

    from nasframe.capabilities import TrainedWeights, ValidationPairs

    class MySpace(SearchSpace, ValidationPairs, TrainedWeights):
        def validation_pairs(self): ...
        def prepare(self, ctx, needs):
            if TrainedWeights in needs:
                ...   # train; skipped for experiments of cost objectives only

Nothing is looked up by ``hasattr``: a space either subclasses the capability
or it does not.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from nasframe.accel import Accelerator
    from nasframe.architecture import Architecture
    from nasframe.context import Context
    from nasframe.deploy import ExportResult


class Capability(abc.ABC):  # noqa: B024 - a marker base; subclasses add the methods
    """Base of every capability. ``key`` names it in messages; ``description`` says what it is."""

    key: ClassVar[str] = "capability"
    description: ClassVar[str] = ""


class TrainedWeights(Capability):
    """Models built after ``prepare(ctx, needs)`` with this capability in ``needs``
    carry trained weights (a trained teacher, a distilled bank), not a fresh
    initialisation. Objectives that score quality require it; cost objectives
    (parameters, MACs, latency) do not, so they never trigger training."""

    key = "trained_weights"
    description = "models with trained weights after preparation (e.g. a trained teacher and distilled blocks)"


class ValidationPairs(Capability):
    """Paired validation data for image-to-image models."""

    key = "validation_pairs"
    description = "validation images as (degraded, clean) pairs"

    @abc.abstractmethod
    def validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(input, target)`` pairs of ``(1, C, H, W)`` tensors in [0, 1]."""


class ImageToImage(Capability):
    """The main model maps an image ``(B, C, H, W)`` in [0, 1] to an image of the
    same shape (a restoration network); quick image proxies train such models."""

    key = "image_to_image"
    description = "a main model mapping (B, C, H, W) images to images of the same shape"


class BlockKinds(Capability):
    """The block graph's nodes carry a ``kind`` drawn from :meth:`block_kinds`
    (e.g. ``transformer`` and ``ssm`` slots), so objectives can count them."""

    key = "block_kinds"
    description = "a block graph whose nodes name their kind (e.g. transformer, ssm)"

    @abc.abstractmethod
    def block_kinds(self) -> Mapping[str, str]:
        """The node kinds the graph may hold, each with one line saying what it is."""


class ModelParts(Capability):
    """Candidates have more networks than the main model (a VAE encoder and
    decoder, a pipeline); objectives take ``part`` to score one of them."""

    key = "model_parts"
    description = "extra buildable model parts besides the main model"

    @abc.abstractmethod
    def parts(self) -> tuple[str, ...]:
        """Names of the extra parts."""

    @abc.abstractmethod
    def build_part(self, arch: Architecture, part: str) -> torch.nn.Module:
        """A freshly initialised module for part ``part`` of ``arch``."""

    @abc.abstractmethod
    def part_example_inputs(self, arch: Architecture, part: str,
                            input_shape: Sequence[int] | None = None,
                            batch_size: int = 1) -> tuple[Any, ...]:
        """Inputs for one forward pass of part ``part`` (as ``example_inputs``)."""


class Teacher(Capability):
    """A teacher model that candidates are compared with (``fidelity``).

    The teacher's ``forward(*inputs, return_features=True)`` returns
    ``(output, {feature: tensor})``, as the candidates' models do."""

    key = "teacher"
    description = "a teacher model, fixed inputs and feature correspondences (for fidelity)"

    @abc.abstractmethod
    def teacher(self, part: str | None = None) -> torch.nn.Module:
        """The full teacher (or the teacher of model part ``part``), eval mode, not to be modified."""

    @abc.abstractmethod
    def fidelity_inputs(self, part: str | None = None) -> list[tuple[torch.Tensor, ...]]:
        """Fixed batches of inputs the comparison runs on."""

    @abc.abstractmethod
    def feature_channels(self, arch: Architecture, part: str | None = None) -> dict[str, Any]:
        """For each stage feature a candidate returns, the teacher channels it
        corresponds to (an index tensor, or None for all); empty: compare outputs only."""


class BlockAlignment(Capability):
    """Changed blocks of a candidate can be distilled to mimic their teacher blocks."""

    key = "block_alignment"
    description = "distillation of a candidate's changed blocks towards the teacher's"

    @abc.abstractmethod
    def align(self, model: torch.nn.Module, arch: Architecture, ctx: Context, *, steps: int,
              lr: float, batch_size: int, seed: int) -> dict[str, Any]:
        """Distil ``model``'s changed blocks in place; a report with ``pairs``,
        ``trained``, ``cached`` and ``seconds``."""


class Finetunable(Capability):
    """A candidate's model can be trained further, end to end, on the task's training data
    (a short fine-tuning: the multi-fidelity axis of quality objectives)."""

    key = "finetunable"
    description = "end-to-end fine-tuning of a candidate's model on the task's training data"

    @abc.abstractmethod
    def finetune(self, model: torch.nn.Module, steps: int, *, seed: int, lr: float | None = None,
                 on_step: Callable[[int], None] | None = None,
                 accel: Accelerator | None = None) -> None:
        """Train ``model`` in place for ``steps`` steps with the space's loss and data
        (``seed`` picks the batches; ``lr`` None: the space's default); ``on_step(k)``
        runs after step ``k`` (1-based) and may raise to stop the training there.
        ``accel`` (:mod:`nasframe.accel`; None: the CPU in fp32): where and at which
        precision it trains; the model is moved there and left there."""


class Exportable(Capability):
    """Models (and parts) can be made ready for export to deployable formats
    (ONNX, TorchScript, ExportedProgram): e.g. custom kernels swapped for an
    exportable formulation of plain tensor ops."""

    key = "exportable"
    description = "models that export to ONNX / TorchScript / ExportedProgram"

    @abc.abstractmethod
    def export_module(self, arch: Architecture, model: torch.nn.Module,
                      part: str | None = None) -> torch.nn.Module:
        """``model`` (built for ``arch``, or its part ``part``) set up for export;
        may be ``model`` itself, changed in place."""


class QuantisedGraph(Capability):
    """The space writes the deployable *quantised* graph of an architecture (a QDQ
    ONNX file with the architecture's bit widths: what an NPU compiles), and says what
    to feed it. The ``latency`` objective times it with ``graph: quantised``."""

    key = "quantised_graph"
    description = "a deployable quantised (QDQ ONNX) graph per architecture"

    @abc.abstractmethod
    def quantised_inputs(self, arch: Architecture, model: torch.nn.Module,
                         input_shape: Sequence[int] | None = None,
                         batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """The quantised graph's inputs for one pass (all of them, e.g. adapters too)."""

    @abc.abstractmethod
    def export_quantised(self, arch: Architecture, model: torch.nn.Module,
                         inputs: tuple[torch.Tensor, ...], path: str | Path) -> ExportResult:
        """Write the quantised graph of ``model`` (built for ``arch``) to ``path``, checked
        in ONNX Runtime on ``inputs``; its metadata as :func:`nasframe.deploy.export_module`
        writes it (``<path>.json``)."""


@dataclass(frozen=True)
class LatencyPart:
    """One block or layer of a candidate that a latency lookup table times on its own.

    ``key`` names the variant: two parts with the same key are the same module on
    the same input (kind, channels, heads, kernel, input shape, ...), timed once.
    ``build()`` makes a fresh module; it is called as ``module(*inputs)`` with one
    random tensor per shape in ``input_shapes`` (batch included)."""

    key: str
    build: Callable[[], torch.nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]


class BlockLatencyParts(Capability):
    """A candidate's latency as the sum of its searched blocks/layers plus a fixed rest:
    the space lists the variants its blocks come in and which ones a candidate uses
    (``latency_lut`` times each variant once, instead of every candidate)."""

    key = "block_latency_parts"
    description = "the block/layer variants a candidate is made of, each timeable on its own"

    @abc.abstractmethod
    def latency_variants(self, input_shape: Sequence[int]) -> list[LatencyPart]:
        """Every distinct variant any candidate can hold, for a model input of
        ``input_shape`` (batch included); keys distinct."""

    @abc.abstractmethod
    def latency_parts(self, arch: Architecture, input_shape: Sequence[int]) -> list[LatencyPart]:
        """The variant of each searched block/layer of ``arch``, in forward order, one
        entry per occurrence (keys among :meth:`latency_variants`'); what it leaves out
        (stem, skips, resampling) is the table's fixed part."""


class MultiTask(Capability):
    """One shared model serves several tasks through per-task adapters fed at run time
    (QUAD); each task's quality after quantisation and the bytes on a device can be
    scored."""

    key = "multi_task"
    description = "several tasks on one shared (quantised) model with per-task adapters"

    @abc.abstractmethod
    def tasks(self) -> tuple[str, ...]:
        """The task names."""

    @abc.abstractmethod
    def task_quality(self, arch: Architecture, model: torch.nn.Module, ctx: Context,
                     method: str) -> dict[str, float]:
        """``{task: quality}`` of ``model``'s tasks quantised with ``method`` (one of
        :meth:`quality_methods`, e.g. ``quad``: one shared profile, adapters trained for it)."""

    def quality_methods(self) -> tuple[str, ...]:
        """The methods :meth:`task_quality` accepts."""
        return ("quad",)

    @abc.abstractmethod
    def deploy_bytes(self, arch: Architecture, model: torch.nn.Module,
                     tasks: int) -> dict[str, float]:
        """Bytes of ``tasks`` tasks on the device: ``shared_bytes`` (one graph + adapters),
        ``separate_bytes`` (one merged model per task) and their ``ratio``."""


#: every capability the core defines (plugins may define more)
CORE_CAPABILITIES: tuple[type[Capability], ...] = (
    TrainedWeights, ValidationPairs, ImageToImage, BlockKinds, ModelParts, Teacher,
    BlockAlignment, Exportable, BlockLatencyParts, MultiTask)


def provided_by(space: object) -> list[type[Capability]]:
    """The capabilities ``space`` declares (see :func:`provided_by_class`)."""
    return provided_by_class(type(space))


def provided_by_class(cls: type) -> list[type[Capability]]:
    """The capabilities a space class declares: the classes among its bases that
    define a capability ``key`` of their own, in method-resolution order."""
    return [c for c in cls.__mro__
            if issubclass(c, Capability) and c is not Capability and "key" in vars(c)]


def names(caps: Iterable[type[Capability]]) -> str:
    return ", ".join(c.key for c in caps) or "none"


def missing(space: object, required: Iterable[type[Capability]]) -> list[type[Capability]]:
    """The capabilities in ``required`` that ``space`` does not declare."""
    return [c for c in required if not isinstance(space, c)]
