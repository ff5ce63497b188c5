"""Stitched distillation: students trained inside the teacher, on its output."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from test_distill import MixStudent, Teacher, batches, make_teacher, mlp, no_hooks
from torch import nn

from nasframe.context import ArtifactCache
from nasframe.distill import StitchResult, distill, module_digest, stitch, stitch_cached
from nasframe.errors import ConfigError


class Stop(Exception):
    pass


def state(teacher: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def modules(teacher: nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in teacher.named_modules()}


def distilled(teacher: Teacher, steps: int = 60) -> dict[str, nn.Module]:
    """Students after feature distillation: each close to its block on the block's own input."""
    torch.manual_seed(1)
    students = {"blocks.0": mlp(), "blocks.1": mlp(), "mix": MixStudent()}
    distill(teacher, students, batches, steps=steps, lr=3e-3,
            inputs_of=lambda name, args, kwargs: (args[0], kwargs["scale"]) if name == "mix"
            else args[0])
    return students


def test_stitching_lowers_the_output_error_and_leaves_the_teacher_as_it_was():
    teacher = make_teacher()
    teacher.train()                       # stitch runs it in eval mode and gives the modes back
    teacher.head.weight.requires_grad_(False)   # a frozen flag comes back frozen, others trainable
    before, names = state(teacher), modules(teacher)
    students = distilled(teacher)
    result = stitch(teacher, students, batches, steps=150, lr=2e-3, seed=0)

    assert isinstance(result, StitchResult) and result.steps == 150 and not result.cached
    assert set(result.errors) == {"all", "blocks.0", "blocks.1", "mix"}
    # the students together, and each alone, move the output less than before
    assert result.errors["all"] < 0.5 * result.initial_errors["all"], result
    for name in students:
        assert result.errors[name] < result.initial_errors[name], (name, result)
    # the teacher: same modules, weights, modes, requires_grad flags; no hooks
    assert modules(teacher) == names
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(m.training for m in teacher.modules())
    assert not teacher.head.weight.requires_grad
    assert all(p.requires_grad for n, p in teacher.named_parameters() if n != "head.weight")
    assert no_hooks(teacher)
    assert all(not m.training for s in students.values() for m in s.modules())


def test_exact_copies_have_zero_error_and_a_keyword_sub_module_is_swapped_too():
    teacher = make_teacher()
    copies = {"blocks.1": copy.deepcopy(teacher.blocks[1]), "mix": copy.deepcopy(teacher.mix)}
    result = stitch(teacher, copies, batches, steps=0)
    assert result.initial_errors == {"all": 0.0, "blocks.1": 0.0, "mix": 0.0} == result.errors


def test_the_same_seed_gives_the_same_students_another_seed_others():
    teacher = make_teacher()
    runs = []
    for seed in (0, 0, 1):
        students = distilled(teacher, steps=5)
        stitch(teacher, students, batches, steps=20, seed=seed)
        runs.append({n: module_digest(s) for n, s in students.items()})
    assert runs[0] == runs[1] != runs[2]


@pytest.mark.parametrize("students, match", [
    ({"block.1": mlp()}, r"no sub-module 'block.1'.*close matches: 'blocks.1'"),
    ({"": mlp()}, "not for the whole teacher"),
    ({}, "no students"),
])
def test_bad_students_are_named_and_the_teacher_is_unchanged(students, match):
    teacher = make_teacher()
    names = modules(teacher)
    with pytest.raises(ConfigError, match=match):
        stitch(teacher, students, batches, steps=1)
    assert modules(teacher) == names


def test_a_shape_mismatch_names_both_shapes_and_swaps_the_student_out():
    teacher = make_teacher()
    names, before = modules(teacher), state(teacher)
    with pytest.raises(ConfigError, match=r"shape"):
        stitch(teacher, {"head": nn.Linear(16, 3)}, batches, steps=1)
    assert modules(teacher) == names and all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ConfigError, match="loss must be 'l1' or 'mse'"):
        stitch(teacher, {"blocks.0": mlp()}, batches, steps=1, loss="huber")


def test_progress_bar_counts_steps():
    teacher = make_teacher()
    console = Console(file=io.StringIO(), force_terminal=False)
    with Progress(console=console) as bar:
        stitch(teacher, {"blocks.0": mlp()}, batches, steps=7, progress=bar, description="stitch")
        (task,) = bar.tasks
    assert task.description == "stitch" and task.completed == 7 and "l1" in task.fields["info"]


def test_stitch_cached_trains_once_keyed_by_the_students_it_starts_from(tmp_path):
    cache = ArtifactCache(tmp_path)
    teacher = make_teacher()
    calls: list[int] = []

    def counted(step):
        calls.append(step)
        return batches(step)

    payload = {"teacher": module_digest(teacher), "data": "randn(64,8) seed 1000+step", "v": 1}
    first_students = distilled(teacher, steps=5)
    first = stitch_cached(cache, "stitch", payload, teacher, first_students, counted, steps=10)
    assert not first.cached and len(calls) == 11          # the probe batches(-1) + 10 steps
    calls.clear()
    again = distilled(teacher, steps=5)
    second = stitch_cached(cache, "stitch", payload, teacher, again, counted, steps=10)
    assert calls == [] and second.cached and second.errors == first.errors
    assert {n: module_digest(s) for n, s in again.items()} == \
           {n: module_digest(s) for n, s in first_students.items()}
    # students distilled otherwise: a new artifact
    stitch_cached(cache, "stitch", payload, teacher, distilled(teacher, steps=6), counted, steps=10)
    assert len(calls) == 11


def test_a_stitch_stopped_midway_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFRAME_CHECKPOINT_SECONDS", "0")        # save after every step
    teacher = make_teacher()
    payload = {"teacher": module_digest(teacher), "v": 1}

    def stopping(at):
        def fn(step):
            if step == at:
                raise Stop()
            return batches(step)
        return fn

    ref = distilled(teacher, steps=5)
    stitch_cached(ArtifactCache(tmp_path / "ref"), "s", payload, teacher, ref, batches, steps=12)
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(Stop):
        stitch_cached(cache, "s", payload, teacher, distilled(teacher, steps=5), stopping(7),
                      steps=12)
    assert no_hooks(teacher) and modules(teacher) == modules(make_teacher())
    resumed, drawn = distilled(teacher, steps=5), []
    stitch_cached(cache, "s", payload, teacher, resumed, lambda s: drawn.append(s) or batches(s),
                  steps=12)
    assert [s for s in drawn if s >= 0] == list(range(7, 12))     # from the checkpoint on
    for name in ref:
        assert module_digest(resumed[name]) == module_digest(ref[name]), name
