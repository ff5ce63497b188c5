"""The feature-distillation helper: students learn teacher sub-modules from the teacher's own features."""
from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from nasframe.context import ArtifactCache, Context
from nasframe.distill import DistillResult, distill, distill_cached, module_digest
from nasframe.errors import ConfigError


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Mix(nn.Module):
    """A sub-module with two inputs, the second passed by keyword."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x, scale=None):
        return self.fc(x) * torch.sigmoid(scale)


class Teacher(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem, self.cond = nn.Linear(8, dim), nn.Linear(8, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.mix = Mix(dim)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.stem(x))
        for block in self.blocks:
            h = block(h).relu_()  # in place on the block's output: captures must not see it
        h = self.mix(h, scale=self.cond(x))
        return self.head(self.drop(h))


def mlp(dim: int = 16, hidden: int = 48) -> nn.Module:
    """A student of another architecture with the same shapes."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))


class MixStudent(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.body = mlp(dim, 24)

    def forward(self, x, scale):
        return self.body(x) * torch.sigmoid(scale)


def batches(step: int) -> torch.Tensor:
    return torch.randn(64, 8, generator=torch.Generator().manual_seed(1000 + step))


def make_teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher()


def no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


@pytest.mark.slow
def test_students_learn_the_teacher_blocks_and_the_teacher_is_untouched():
    teacher = make_teacher()
    teacher.train()  # distill runs it in eval mode and gives the modes back
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    students = {"blocks.0": mlp(), "blocks.1": mlp()}
    result = distill(teacher, students, batches, steps=300, lr=3e-3)

    assert isinstance(result, DistillResult) and result.steps == 300 and not result.cached
    for name in students:
        assert result.losses[name] < 0.3 * result.initial_losses[name], result
        assert result.reference[name] > 0
        assert result.relative()[name] == pytest.approx(result.losses[name] / result.reference[name])
        assert result.relative(initial=True)[name] > result.relative()[name]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(m.training for m in teacher.modules())
    assert all(not m.training for s in students.values() for m in s.modules())
    assert no_hooks(teacher)


def test_an_exact_copy_has_zero_loss_despite_in_place_ops_and_repeated_calls():
    teacher = make_teacher()
    # blocks.0 outputs are modified in place by the teacher right after the block
    result = distill(teacher, {"blocks.0": copy.deepcopy(teacher.blocks[0])}, batches, steps=0)
    assert result.losses["blocks.0"] == 0.0 and result.initial_losses["blocks.0"] == 0.0

    class Twice(nn.Module):  # one sub-module called twice per forward: both calls count
        def __init__(self):
            super().__init__()
            self.block, self.unused = Block(8), nn.Linear(8, 8)

        def forward(self, x):
            return self.block(self.block(x))

    twice = Twice()
    assert distill(twice, {"block": copy.deepcopy(twice.block)}, batches, steps=0).losses["block"] == 0
    with pytest.raises(ConfigError, match="'unused'.*not called"):
        distill(twice, {"unused": nn.Linear(8, 8)}, batches, steps=1)
    assert no_hooks(twice)


def test_a_wrong_name_lists_close_matches():
    teacher = make_teacher()
    with pytest.raises(ConfigError) as err:
        distill(teacher, {"block.1": mlp()}, batches, steps=1)
    assert "'block.1'" in str(err.value) and "'blocks.1'" in str(err.value)
    assert no_hooks(teacher)


def test_a_shape_mismatch_names_both_shapes_and_removes_the_hooks():
    teacher = make_teacher()
    with pytest.raises(ConfigError) as err:
        distill(teacher, {"blocks.0": mlp(), "blocks.1": nn.Linear(16, 12)}, batches, steps=5)
    message = str(err.value)
    assert "'blocks.1'" in message and "[64, 12]" in message and "[64, 16]" in message
    assert no_hooks(teacher) and all(m.training for m in teacher.modules())  # modes restored


@pytest.mark.slow
def test_a_multi_input_sub_module_via_inputs_of():
    teacher = make_teacher()

    def inputs_of(name, args, kwargs):
        return (args[0], kwargs["scale"]) if name == "mix" else args[0]

    torch.manual_seed(2)
    students = {"mix": MixStudent(), "blocks.1": mlp()}
    result = distill(teacher, students, batches, steps=200, lr=1e-2, inputs_of=inputs_of)
    assert result.losses["mix"] < 0.3 * result.initial_losses["mix"]

    # without inputs_of the student gets only the first argument, and says which pair failed
    with pytest.raises(TypeError) as err:
        distill(teacher, {"mix": MixStudent()}, batches, steps=1)
    assert "'mix'" in "".join(getattr(err.value, "__notes__", []))
    assert no_hooks(teacher)


@pytest.mark.slow
def test_a_narrow_student_learns_a_channel_subset_via_outputs_of():
    """A student with fewer channels than its teacher block: inputs_of slices what it
    reads, outputs_of what it must reproduce (the surgery of a narrowed block)."""
    teacher = make_teacher()
    keep = torch.tensor([0, 3, 5, 6, 9, 12, 13, 15])
    torch.manual_seed(3)
    student = mlp(dim=8, hidden=32)
    seen = {}

    def outputs_of(name, output):
        seen[name] = tuple(output.shape)
        return output[:, keep]

    result = distill(teacher, {"blocks.0": student}, batches, steps=200, lr=1e-2,
                     inputs_of=lambda name, args, kwargs: args[0][:, keep], outputs_of=outputs_of)
    assert seen["blocks.0"] == (64, 16)                 # it saw the teacher's whole output
    assert result.losses["blocks.0"] < 0.3 * result.initial_losses["blocks.0"]
    x = batches(-1)
    with torch.no_grad():
        h = torch.nn.functional.gelu(teacher.stem(x))
        want = teacher.blocks[0](h)[:, keep]
        got = student(h[:, keep])
    assert float((got - want).pow(2).mean()) == pytest.approx(result.losses["blocks.0"], rel=1e-4)
    assert no_hooks(teacher)


def test_progress_on_a_context_or_a_rich_progress(tmp_path):
    teacher = make_teacher()
    distill(teacher, {"blocks.0": mlp()}, batches, steps=3,
            progress=Context(run_dir=tmp_path, quiet=True))
    console = Console(file=io.StringIO(), force_terminal=False)
    with Progress(console=console) as bar:
        distill(teacher, {"blocks.0": mlp()}, batches, steps=7, progress=bar, description="ssm")
        (task,) = bar.tasks
    assert task.description == "ssm" and task.completed == 7 and "mse" in task.fields["info"]


def test_distill_cached_trains_once_then_loads_the_same_weights(tmp_path):
    cache = ArtifactCache(tmp_path)
    teacher = make_teacher()
    calls: list[int] = []

    def counted(step):
        calls.append(step)
        return batches(step)

    def fresh():
        torch.manual_seed(3)
        return {"blocks.0": mlp(), "blocks.1": mlp()}

    payload = {"teacher": module_digest(teacher), "data": "randn(64,8) seed 1000+step", "v": 1}
    first_students = fresh()
    first = distill_cached(cache, "distill", payload, teacher, first_students, counted, steps=20)
    assert not first.cached and len(calls) == 21  # the probe batches(-1) once + 20 steps
    calls.clear()

    again = fresh()
    second = distill_cached(cache, "distill", payload, teacher, again, counted, steps=20)
    assert calls == [] and second.cached
    assert second.losses == first.losses and second.reference == first.reference
    for name in again:
        assert module_digest(again[name]) == module_digest(first_students[name])
        assert not again[name].training

    # anything in the key changes: the payload, or the hyper-parameters distill_cached sees
    distill_cached(cache, "distill", payload, teacher, fresh(), counted, steps=21)
    assert len(calls) == 22
    calls.clear()
    distill_cached(cache, "distill", {**payload, "v": 2}, teacher, fresh(), counted, steps=20)
    assert len(calls) == 21
    dirs = [p for p in (tmp_path / "distill").iterdir() if p.is_dir()]
    assert len(dirs) == 3 and all(json.loads((d / "result.json").read_text())["steps"] in (20, 21)
                                  for d in dirs)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_module_digest_sees_weights_names_and_shapes():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    assert module_digest(a) != module_digest(b)
    b.load_state_dict(a.state_dict())
    assert module_digest(a) == module_digest(b) == module_digest(a.state_dict())
    assert len(module_digest(a)) == 16
    assert module_digest(nn.Linear(4, 4, bias=False).half()) != module_digest(a)
