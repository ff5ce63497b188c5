"""Feature distillation: train small modules to stand in for parts of a teacher.

Given a teacher and students keyed by the name of a teacher sub-module (as in
``teacher.named_modules()``), :func:`distill` trains every student to
reproduce its sub-module's output from the input that sub-module receives
inside the teacher (feature MSE). One teacher forward per step feeds all
students, so dozens of block surrogates train together in one pass over the
data::

    from nasframe.distill import distill, distill_cached, module_digest

    students = {f"blocks.{i}": Surrogate(dim) for i in range(12)}
    result = distill(teacher, students, lambda step: data(step), steps=500,
                     progress=ctx)
    result.relative()          # {"blocks.0": 0.03, ...}: loss / mean square of the feature

The teacher is only read: it runs in eval mode under ``torch.no_grad`` (its
modes are restored afterwards), its inputs and outputs are captured with
forward hooks that are always removed, and its parameters never change.
Captured features live for one step only.

:func:`distill_cached` stores the trained students and the result in the
run's :class:`~nasframe.context.ArtifactCache`, so a second call with the same
payload loads the weights instead of training.

Feature MSE trains each student on its teacher block's own input, alone. Put
into a network beside other students, a student sees inputs its neighbours
have already changed, and what it gets wrong is weighed by how much it moves
the network's output, not its feature. :func:`stitch` (and
:func:`stitch_cached`) is the second stage: the students, swapped into the
teacher in place of their sub-modules (a random subset each step, the rest the
teacher's own frozen blocks), train on the whole network's output against the
teacher's::

    result = stitch(teacher, students, lambda step: data(step), steps=400, lr=1e-3)
    result.errors      # {"all": 0.004, "blocks.0": 0.0003, ...}: output MSE / mean square
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasframe import checkpoint
from nasframe.accel import Accelerator
from nasframe.context import ArtifactCache
from nasframe.errors import ConfigError

__all__ = ["DistillResult", "StitchResult", "distill", "distill_cached", "module_digest",
           "stitch", "stitch_cached"]

#: ``inputs_of(name, args, kwargs)``: what the student named ``name`` is called with.
InputsOf = Callable[[str, tuple, dict], Any]
#: ``outputs_of(name, output)``: what the student named ``name`` must reproduce.
OutputsOf = Callable[[str, Any], Any]

_STUDENTS_FILE = "students.pt"
_RESULT_FILE = "result.json"


@dataclass
class DistillResult:
    """What a distillation achieved, measured on the probe batch(es).

    ``losses`` and ``initial_losses`` are the feature MSE of each student after
    and before training; ``reference`` is the mean square of the teacher's
    feature, a scale for the loss (``relative()`` = loss / reference, so 0 is
    perfect and 1 is as bad as predicting zeros). ``cached`` is true when the
    students were loaded by :func:`distill_cached` instead of trained
    (``seconds`` is then the time the original training took).
    """

    losses: dict[str, float]
    initial_losses: dict[str, float]
    reference: dict[str, float]
    steps: int
    seconds: float
    cached: bool = False

    def relative(self, initial: bool = False) -> dict[str, float]:
        """Loss / reference per student (``initial=True``: before training)."""
        losses = self.initial_losses if initial else self.losses
        return {name: _ratio(loss, self.reference[name]) for name, loss in losses.items()}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cached: bool = False) -> DistillResult:
        return cls(losses=dict(data["losses"]), initial_losses=dict(data["initial_losses"]),
                   reference=dict(data["reference"]), steps=int(data["steps"]),
                   seconds=float(data["seconds"]), cached=cached)


@dataclass
class StitchResult:
    """What :func:`stitch` achieved, measured on the probe batch(es).

    ``errors`` and ``initial_errors`` (after and before training) are the MSE of
    the network's output against the teacher's, relative to the mean square of
    the teacher's output (0 is perfect), with every student swapped in
    (``"all"``) and with each student alone (its name). ``cached``: the
    students were loaded by :func:`stitch_cached` (``seconds`` is then the time
    the original training took).
    """

    errors: dict[str, float]
    initial_errors: dict[str, float]
    steps: int
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cached: bool = False) -> StitchResult:
        return cls(errors=dict(data["errors"]), initial_errors=dict(data["initial_errors"]),
                   steps=int(data["steps"]), seconds=float(data["seconds"]), cached=cached)


def _ratio(loss: float, reference: float) -> float:
    if reference > 0:
        return loss / reference
    return 0.0 if loss == 0 else math.inf


# ---------------------------------------------------------------------------------- helpers

def module_digest(module: nn.Module | Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of a module's state_dict: names, dtypes, shapes and bytes.

    Two modules with equal digests hold the same weights under the same names;
    use it in cache payloads (a teacher, a student's initialisation). It does
    not see code: two classes with the same parameters but different forwards
    collide, so name the architecture in the payload too.
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            if t.is_quantized:
                t = t.dequantize()
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _leaves(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tensor / tuple / list / dict, in a stable order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _leaves(v)]
    if isinstance(value, Mapping):
        return [t for k in value for t in _leaves(value[k])]
    return []


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, Mapping):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _call(module: Callable, inputs: Any) -> Any:
    """A tensor is one argument, a tuple/list positional arguments, a dict keyword arguments."""
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    if isinstance(inputs, Mapping):
        return module(**inputs)
    return module(inputs)


def _first_input(name: str, args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    if len(kwargs) == 1:
        return next(iter(kwargs.values()))
    raise ConfigError(f"distill: teacher module '{name}' was called without positional "
                      f"arguments (keywords: {', '.join(kwargs) or 'none'}); pass "
                      f"inputs_of=... to say what its student receives")


def _accelerator(device: Any, precision: str, teacher: nn.Module) -> Accelerator:
    """``device`` as an :class:`Accelerator` (default: the teacher's device at ``precision``)."""
    if isinstance(device, Accelerator):
        return device
    return Accelerator(torch.device(device) if device is not None else _device_of(teacher),
                       precision)


def _optimiser(students: Mapping[str, nn.Module], lr: float, weight_decay: float, steps: int):
    """Each student's trainable parameters (a shared one counted once), one AdamW over all
    and its cosine decay over ``steps`` (None, None without parameters)."""
    params: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, s in students.items():
        params[name] = [p for p in s.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params[name])
    flat = [p for ps in params.values() for p in ps]
    opt = torch.optim.AdamW(flat, lr=lr, weight_decay=weight_decay) if flat else None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if opt else None
    return params, opt, sched


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _shapes(value: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _leaves(value)]


def _named(teacher: nn.Module, names: list[str], what: str) -> dict[str, nn.Module]:
    """``teacher``'s sub-modules by name; a name it lacks is an error with close matches."""
    modules = dict(teacher.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        problems = []
        for n in missing:
            close = difflib.get_close_matches(n, list(modules), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
            problems.append(f"{what}: teacher has no sub-module '{n}'{hint} "
                            f"(names as in teacher.named_modules(), e.g. "
                            f"{', '.join(repr(m) for m in list(modules)[1:4])})")
        raise ConfigError(*problems)
    return {n: modules[n] for n in names}


class _Capture:
    """Forward hooks that record each named sub-module's inputs and output, per forward."""

    def __init__(self, teacher: nn.Module, names: list[str], inputs_of: InputsOf,
                 outputs_of: OutputsOf | None = None):
        modules = _named(teacher, names, "distill")
        self.records: dict[str, list[list[Any]]] = {n: [] for n in names}
        self.handles: list[Any] = []
        try:
            for n in names:
                self.handles.append(modules[n].register_forward_pre_hook(
                    self._pre(n, inputs_of), with_kwargs=True))
                self.handles.append(modules[n].register_forward_hook(self._post(n, outputs_of)))
        except BaseException:
            self.remove()
            raise

    def _pre(self, name: str, inputs_of: InputsOf):
        def hook(module, args, kwargs):
            # clone: a later in-place op in the teacher must not change what we captured
            inputs = _map_tensors(inputs_of(name, args, kwargs), lambda t: t.detach().clone())
            self.records[name].append([inputs, None])
        return hook

    def _post(self, name: str, outputs_of: OutputsOf | None):
        def hook(module, args, output):
            if outputs_of is not None:
                output = outputs_of(name, output)
            self.records[name][-1][1] = _map_tensors(output, lambda t: t.detach().clone())
        return hook

    def run(self, teacher: nn.Module, batch: Any) -> dict[str, list[list[Any]]]:
        for calls in self.records.values():
            calls.clear()
        with torch.no_grad():
            _call(teacher, batch)
        records = {n: list(calls) for n, calls in self.records.items()}
        for calls in self.records.values():
            calls.clear()
        not_called = [n for n, calls in records.items() if not calls]
        if not_called:
            raise ConfigError(f"distill: teacher sub-module(s) {', '.join(map(repr, not_called))} "
                              f"were not called by the teacher's forward (called through "
                              f".forward() directly, or on a branch this input skips?)")
        return records

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _pair_loss(name: str, student: nn.Module, calls: list[list[Any]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature MSE over all calls, mean square of the teacher feature) for one pair."""
    sq_err: torch.Tensor | float = 0.0
    sq_ref: torch.Tensor | float = 0.0
    count = 0
    for inputs, target in calls:
        try:
            out = _call(student, inputs)
        except Exception as err:
            err.add_note(f"while running the distillation student for teacher module '{name}'")
            raise
        got, want = _shapes(out), _shapes(target)
        if got != want:
            raise ConfigError(f"distill: student for '{name}' returns shape(s) "
                              f"{_fmt_shapes(got)} but the teacher module returns "
                              f"{_fmt_shapes(want)}; a student must match its teacher "
                              f"module's output")
        for o, t in zip(_leaves(out), _leaves(target)):
            t = t.float()
            sq_err = sq_err + (o.float() - t).pow(2).sum()
            sq_ref = sq_ref + t.pow(2).sum()
            count += t.numel()
    count = max(count, 1)
    return sq_err / count, torch.as_tensor(sq_ref) / count


def _fmt_shapes(shapes: list[tuple[int, ...]]) -> str:
    return " ".join(str(list(s)) for s in shapes) if shapes else "no tensor"



# ---------------------------------------------------------------------------------- distill

def distill(teacher: nn.Module, students: Mapping[str, nn.Module],
            batches: Callable[[int], Any], *, steps: int, lr: float = 1e-3,
            weight_decay: float = 0.0, grad_clip: float | None = 1.0, probe: Any = None,
            inputs_of: InputsOf | None = None, outputs_of: OutputsOf | None = None,
            device: str | torch.device | Accelerator | None = None, precision: str = "fp32",
            progress: Any = None, description: str = "distilling") -> DistillResult:
    """Train each student to reproduce a teacher sub-module's output (feature MSE).

    ``students`` maps a sub-module name of ``teacher`` (as in
    ``teacher.named_modules()``) to a module with the same input and output
    shapes. ``batches(step)`` gives the teacher's input for ``step`` in
    ``range(steps)``: a tensor (one argument), a tuple/list (positional
    arguments) or a dict (keyword arguments); making it deterministic in
    ``step`` is the caller's business. Each step runs the teacher once, then
    every student on the input its sub-module received.

    A student is called with its sub-module's first positional argument (or
    its only keyword argument);
    ``inputs_of(name, args, kwargs)`` replaces that, returning a tensor, a
    tuple (positional arguments) or a dict (keyword arguments) for the
    student. ``outputs_of(name, output)`` likewise replaces the target (by
    default the sub-module's output), e.g. a channel subset for a narrowed
    student. A sub-module called several times per forward is distilled on
    every call.

    ``probe`` is the held-out batch for ``initial_losses`` and ``losses``
    (measured in eval mode, without gradient): one batch like those of
    ``batches``, or a list of such batches; by default ``batches(-1)``, which
    is never a training step (a ``batches`` that draws fresh random data per
    step makes it held out).

    Training: one AdamW over all students (their parameters are disjoint, so
    this equals one optimiser each), a cosine learning-rate decay over
    ``steps``, and ``grad_clip`` clipping each student's gradient norm on its
    own. Each student's graph is freed before the next runs, so memory holds
    one student's activations plus one step's captured features.

    ``device``: where the inputs and students go (default: the teacher's
    device; the teacher is not moved); an :class:`~nasframe.accel.Accelerator` (e.g.
    ``ctx.accel``) gives the device and the precision. ``precision``: ``fp32``, or ``bf16``/``fp16``
    autocast of the teacher's and students' forward passes (fp16 with loss scaling;
    :mod:`nasframe.accel`). ``progress``: a started rich
    ``Progress``, a :class:`~nasframe.context.Context` (its ``ctx.progress()``
    bar is used), or None. Students come back in eval mode; the teacher's
    modes, parameters and hooks are as before.
    """
    names = list(students)
    if not names:
        raise ConfigError("distill: no students given")
    if steps < 0:
        raise ConfigError(f"distill: steps must be >= 0 (got {steps})")
    accel = _accelerator(device, precision, teacher)
    inputs_of = inputs_of or _first_input
    start = time.perf_counter()
    for s in students.values():
        accel.to(s)

    modes = {m: m.training for m in teacher.modules()}
    capture = _Capture(teacher, names, inputs_of, outputs_of)
    try:
        teacher.eval()
        probes = probe if isinstance(probe, list) else [batches(-1) if probe is None else probe]
        initial, reference = _measure(teacher, students, capture, probes, accel)
        _train(teacher, students, capture, batches, steps, lr, weight_decay, grad_clip, accel,
               progress, description)
        final, _ = _measure(teacher, students, capture, probes, accel)
    finally:
        capture.remove()
        for m, mode in modes.items():
            m.training = mode
        for s in students.values():
            s.eval()
    return DistillResult(losses=final, initial_losses=initial, reference=reference, steps=steps,
                         seconds=time.perf_counter() - start)


def _measure(teacher, students, capture, probes, accel) -> tuple[dict[str, float], dict[str, float]]:
    loss = {n: 0.0 for n in students}
    ref = {n: 0.0 for n in students}
    for s in students.values():
        s.eval()
    with torch.no_grad(), accel.autocast():
        for batch in probes:
            records = capture.run(teacher, accel.to(batch))
            for name, student in students.items():
                l, r = _pair_loss(name, student, records.pop(name))
                loss[name] += float(l) / len(probes)
                ref[name] += float(r) / len(probes)
    return loss, ref


def _train(teacher, students, capture, batches, steps, lr, weight_decay, grad_clip, accel,
           progress, description) -> None:
    if steps == 0:
        return
    params, opt, sched = _optimiser(students, lr, weight_decay, steps)
    every = max(1, steps // 100)
    device = accel.device
    scaler = accel.grad_scaler()          # fp16: loss scaling; otherwise passes through
    # inside a cached artifact's make: checkpoint, and resume after a stop (nasframe.checkpoint)
    ckpt = checkpoint.loop()
    tensors = [t for s in students.values() for t in (*s.parameters(), *s.buffers())]
    start = 0
    if ckpt is not None:
        start, _ = ckpt.restore(tensors, opt, sched)
    with _Bar(progress, description, steps) as bar:
        for s in students.values():
            s.train()
        running_loss = running_rel = None
        for step in range(start, steps):
            with accel.autocast():
                records = capture.run(teacher, accel.to(batches(step)))
            if opt:
                opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            step_rel = torch.zeros((), device=device)
            for name, student in students.items():
                with accel.autocast():
                    loss, ref = _pair_loss(name, student, records.pop(name))
                if loss.requires_grad:
                    scaler.scale(loss).backward()
                loss = loss.detach()
                step_loss += loss
                step_rel += loss / ref.clamp_min(1e-12)
            if opt:
                scaler.unscale_(opt)
                if grad_clip is not None:       # each student's gradient norm on its own
                    for name in students:
                        if params[name]:
                            nn.utils.clip_grad_norm_(params[name], grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
            n = len(students)
            running_loss = step_loss / n if running_loss is None else 0.9 * running_loss + 0.1 * step_loss / n
            running_rel = step_rel / n if running_rel is None else 0.9 * running_rel + 0.1 * step_rel / n
            if (step + 1) % every == 0 or step + 1 == steps:  # .item() syncs: not every step
                bar.update(step + 1, f"mse {float(running_loss):.3g}  rel {float(running_rel):.3g}")
            if ckpt is not None and ckpt.due(force=step + 1 == steps):
                ckpt.save(step + 1, tensors, opt, sched)


class _Bar:
    """A task on a caller's rich Progress, on ``ctx.progress()``, or nothing."""

    def __init__(self, progress: Any, description: str, total: int):
        self.progress, self.description, self.total = progress, description, total
        self.owned = None
        self.task = None

    def __enter__(self) -> _Bar:
        bar = self.progress
        if bar is not None and not hasattr(bar, "add_task") and hasattr(bar, "progress"):
            self.owned = bar = bar.progress()  # a Context
            bar.__enter__()
        if bar is not None:
            self.task = bar.add_task(self.description, total=self.total, info="")
        self.bar = bar
        return self

    def update(self, completed: int, info: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=completed, info=info)

    def __exit__(self, *exc) -> None:
        if self.owned is not None:
            self.owned.__exit__(*exc)


# ---------------------------------------------------------------------------------- stitch

class _Swap(nn.Module):
    """A teacher sub-module and its student in one place; ``on`` says which one runs."""

    def __init__(self, original: nn.Module, student: nn.Module):
        super().__init__()
        self.original, self.student, self.on = original, student, False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self.student if self.on else self.original)(*args, **kwargs)


class _Swaps:
    """Students put into the teacher in place of their sub-modules, until :meth:`remove`."""

    def __init__(self, teacher: nn.Module, students: Mapping[str, nn.Module]):
        if "" in students:
            raise ConfigError("stitch: a student must stand in for a sub-module of the teacher, "
                              "not for the whole teacher (name '')")
        modules = _named(teacher, list(students), "stitch")
        self.slots: dict[str, tuple[nn.Module, str, nn.Module, _Swap]] = {}
        try:
            for name, student in students.items():
                parent_name, _, child = name.rpartition(".")
                parent = teacher.get_submodule(parent_name)
                swap = _Swap(modules[name], student)
                setattr(parent, child, swap)
                self.slots[name] = (parent, child, modules[name], swap)
        except BaseException:
            self.remove()
            raise

    def use(self, on: set[str] | frozenset[str]) -> None:
        for name, (*_, swap) in self.slots.items():
            swap.on = name in on

    def remove(self) -> None:
        for parent, child, original, _ in self.slots.values():
            setattr(parent, child, original)
        self.slots.clear()


def _subset(names: list[str], seed: int, step: int) -> frozenset[str]:
    """Step ``step``'s students: each with probability ``p``, ``p`` uniform in [0, 1) per
    step, at least one; a function of (seed, step) alone, so a resumed loop draws alike."""
    rng = random.Random(seed * 1_000_003 + step)
    p = rng.random()
    on = frozenset(n for n in names if rng.random() < p)
    return on or frozenset([names[rng.randrange(len(names))]])


def _output_loss(out: Any, ref: Any, kind: str) -> torch.Tensor:
    got, want = _shapes(out), _shapes(ref)
    if got != want:
        raise ConfigError(f"stitch: with students swapped in the network returns shape(s) "
                          f"{_fmt_shapes(got)} but the teacher returns {_fmt_shapes(want)}; a "
                          f"student must match its teacher module's output")
    terms = [(o.float() - r.float()) for o, r in zip(_leaves(out), _leaves(ref))]
    total = sum(t.numel() for t in terms)
    if kind == "l1":
        return sum(t.abs().sum() for t in terms) / max(total, 1)
    return sum(t.pow(2).sum() for t in terms) / max(total, 1)


def stitch(teacher: nn.Module, students: Mapping[str, nn.Module],
           batches: Callable[[int], Any], *, steps: int, lr: float = 1e-3,
           weight_decay: float = 0.0, grad_clip: float | None = 1.0, seed: int = 0,
           loss: str = "l1", probe: Any = None,
           device: str | torch.device | Accelerator | None = None, precision: str = "fp32",
           progress: Any = None, description: str = "stitching") -> StitchResult:
    """Train students inside the teacher, on its output (stitched distillation).

    ``students`` maps sub-module names of ``teacher`` to modules that can stand
    in for them (as for :func:`distill`; typically students :func:`distill` has
    trained). Each step swaps a random subset of them into the teacher (each
    with probability ``p``, ``p`` drawn uniformly per step, at least one; the
    draw is a function of ``seed`` and the step), runs it on ``batches(step)``
    and trains the swapped-in students on ``loss`` (``l1`` or ``mse``) between
    that network's output and the teacher's. The teacher's own modules run but
    do not train; gradients reach a student through the blocks after it, so
    each learns what its errors do to the output, beside the teacher's blocks
    and beside other students: the mixes a block-wise search assembles.

    ``probe`` (default ``batches(-1)``; a batch or a list of batches) measures
    :class:`StitchResult`'s output errors before and after. Training: AdamW over
    the students' parameters, cosine decay over ``steps``, each student's
    gradient norm clipped to ``grad_clip`` on its own, ``precision`` autocast, a
    checkpoint inside a cached artifact's ``make`` (:mod:`nasframe.checkpoint`).
    The students are swapped out again afterwards (also on an error): the
    teacher's modules, modes, parameters and their ``requires_grad`` are as before.
    """
    names = list(students)
    if not names:
        raise ConfigError("stitch: no students given")
    if steps < 0:
        raise ConfigError(f"stitch: steps must be >= 0 (got {steps})")
    if loss not in ("l1", "mse"):
        raise ConfigError(f"stitch: loss must be 'l1' or 'mse' (got {loss!r})")
    accel = _accelerator(device, precision, teacher)
    start = time.perf_counter()
    for s in students.values():
        accel.to(s)
    modes = {m: m.training for m in teacher.modules()}
    frozen = {p: p.requires_grad for p in teacher.parameters()}
    swaps = _Swaps(teacher, students)
    try:
        for p in frozen:
            p.requires_grad_(False)
        probes = probe if isinstance(probe, list) else [batches(-1) if probe is None else probe]
        initial = _stitch_errors(teacher, swaps, names, probes, accel)
        _stitch_train(teacher, students, swaps, batches, steps, lr, weight_decay, grad_clip,
                      seed, loss, accel, progress, description)
        final = _stitch_errors(teacher, swaps, names, probes, accel)
    finally:
        swaps.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
        for s in students.values():
            s.eval()
    return StitchResult(errors=final, initial_errors=initial, steps=steps,
                        seconds=time.perf_counter() - start)


def _stitch_errors(teacher, swaps, names, probes, accel) -> dict[str, float]:
    """Output MSE / mean square of the teacher's output: all students in, then each alone."""
    configs = {"all": frozenset(names), **{n: frozenset([n]) for n in names}}
    err = {k: 0.0 for k in configs}
    teacher.eval()
    with torch.no_grad(), accel.autocast():
        for batch in probes:
            batch = accel.to(batch)
            swaps.use(frozenset())
            ref = _call(teacher, batch)
            scale = sum(float(r.float().pow(2).sum()) for r in _leaves(ref)) / max(
                sum(r.numel() for r in _leaves(ref)), 1)
            for key, on in configs.items():
                swaps.use(on)
                e = float(_output_loss(_call(teacher, batch), ref, "mse"))
                err[key] += _ratio(e, scale) / len(probes)
    swaps.use(frozenset())
    return err


def _stitch_train(teacher, students, swaps, batches, steps, lr, weight_decay, grad_clip, seed,
                  loss_kind, accel, progress, description) -> None:
    if steps == 0:
        return
    names = list(students)
    params, opt, sched = _optimiser(students, lr, weight_decay, steps)
    if opt is None:
        return
    every = max(1, steps // 100)
    scaler = accel.grad_scaler()
    ckpt = checkpoint.loop()
    tensors = [t for s in students.values() for t in (*s.parameters(), *s.buffers())]
    first = 0
    if ckpt is not None:
        first, _ = ckpt.restore(tensors, opt, sched)
    teacher.eval()
    with _Bar(progress, description, steps) as bar:
        running = None
        for step in range(first, steps):
            batch = accel.to(batches(step))
            swaps.use(frozenset())
            with torch.no_grad(), accel.autocast():
                ref = _call(teacher, batch)
            on = _subset(names, seed, step)
            swaps.use(on)
            for n in on:
                students[n].train()
            opt.zero_grad(set_to_none=True)
            with accel.autocast():
                loss = _output_loss(_call(teacher, batch), ref, loss_kind)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if grad_clip is not None:
                for n in on:
                    if params[n]:
                        nn.utils.clip_grad_norm_(params[n], grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            for n in on:
                students[n].eval()
            loss = loss.detach()
            running = loss if running is None else 0.9 * running + 0.1 * loss
            if (step + 1) % every == 0 or step + 1 == steps:
                bar.update(step + 1, f"{loss_kind} {float(running):.3g}  students {len(on)}")
            if ckpt is not None and ckpt.due(force=step + 1 == steps):
                ckpt.save(step + 1, tensors, opt, sched)
    swaps.use(frozenset())


# ---------------------------------------------------------------------------------- caching

def distill_cached(cache: ArtifactCache, namespace: str, payload: Mapping[str, Any],
                   teacher: nn.Module, students: Mapping[str, nn.Module],
                   batches: Callable[[int], Any], *, steps: int, lr: float = 1e-3,
                   weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                   **kwargs: Any) -> DistillResult:
    """:func:`distill`, cached: train once, later load the students' weights.

    The artifact is a directory in ``cache`` (``namespace``) holding
    ``students.pt`` (``torch.save`` of ``{name: state_dict}``) and
    ``result.json`` (:class:`DistillResult`), written atomically. On a hit the
    weights are loaded into ``students`` (``weights_only=True``) and nothing is
    trained or run; the returned result has ``cached=True``.

    The cache key is ``payload`` plus what this function can see: the student
    names, each student's initial :func:`module_digest`, ``steps``, ``lr``,
    ``weight_decay`` and ``grad_clip``. ``payload`` must name everything else
    that determines the result: the teacher (e.g. its ``module_digest``), the
    data ``batches`` and ``probe`` give, ``inputs_of``, the students'
    architecture (code, not only weights), and a version you bump when any of
    it changes. Other ``kwargs`` go to :func:`distill`.
    """
    key = {"payload": dict(payload), "students": {n: module_digest(s) for n, s in students.items()},
           "steps": steps, "lr": lr, "weight_decay": weight_decay, "grad_clip": grad_clip}
    return _cached(cache, namespace, key, students, DistillResult, kwargs.get("device"),
                   lambda: distill(teacher, students, batches, steps=steps, lr=lr,
                                   weight_decay=weight_decay, grad_clip=grad_clip, **kwargs))


def stitch_cached(cache: ArtifactCache, namespace: str, payload: Mapping[str, Any],
                  teacher: nn.Module, students: Mapping[str, nn.Module],
                  batches: Callable[[int], Any], *, steps: int, lr: float = 1e-3,
                  weight_decay: float = 0.0, grad_clip: float | None = 1.0, seed: int = 0,
                  loss: str = "l1", **kwargs: Any) -> StitchResult:
    """:func:`stitch`, cached like :func:`distill_cached`: the key is ``payload`` plus the
    student names, each student's :func:`module_digest` before stitching (so a stitch of
    re-distilled students is a new artifact), ``steps``, ``lr``, ``weight_decay``,
    ``grad_clip``, ``seed`` and ``loss``; ``payload`` names the teacher, the data and a
    version. Other ``kwargs`` go to :func:`stitch`."""
    key = {"payload": dict(payload), "students": {n: module_digest(s) for n, s in students.items()},
           "steps": steps, "lr": lr, "weight_decay": weight_decay, "grad_clip": grad_clip,
           "seed": seed, "loss": loss}
    return _cached(cache, namespace, key, students, StitchResult, kwargs.get("device"),
                   lambda: stitch(teacher, students, batches, steps=steps, lr=lr,
                                  weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                                  loss=loss, **kwargs))


def _cached(cache: ArtifactCache, namespace: str, key: Mapping[str, Any],
            students: Mapping[str, nn.Module], result_type: Any, device: Any,
            train: Callable[[], Any]) -> Any:
    """``train()`` once per ``key``: the artifact folder holds the students' weights and the
    result; on a hit the weights are loaded into ``students`` (on ``device``, eval mode)
    with ``weights_only=True`` and the result comes back with ``cached=True``."""
    trained: list[Any] = []

    def make(tmp: Path) -> None:
        result = train()
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            torch.save({n: {k: v.detach().cpu() for k, v in s.state_dict().items()}
                        for n, s in students.items()}, tmp / _STUDENTS_FILE)
            (tmp / _RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        trained.append(result)

    path = cache.get_or_create(namespace, key, make)
    if trained:
        return trained[0]
    states = torch.load(path / _STUDENTS_FILE, map_location="cpu", weights_only=True)
    for name, student in students.items():
        student.load_state_dict(states[name])
        if isinstance(device, Accelerator):
            device.to(student)
        elif device is not None:
            student.to(device)
        student.eval()
    return result_type.from_dict(json.loads((path / _RESULT_FILE).read_text()), cached=True)
