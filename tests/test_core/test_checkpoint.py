"""Pre-search training survives a stop: loops inside a cached artifact resume from their last
checkpoint and end with exactly the weights of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from nasframe import checkpoint
from nasframe.context import ArtifactCache


class Stop(Exception):
    pass


def _toy_make(stop_at: int | None, steps: int = 30):
    """A cached artifact whose make runs two training loops (as SR's make does): a model
    trained by sd_unet's `fit` (a generator draws the batches), then hybrid_unet-style
    distillation of a student (nasframe.distill)."""
    from nasframe.distill import distill
    from nasframe_search_spaces.sd_unet.pretrain import fit

    def make(path: Path) -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        g = torch.Generator().manual_seed(1)
        count = {"n": 0}

        def loss_fn():
            count["n"] += 1
            if stop_at is not None and count["n"] == stop_at:
                raise Stop()
            x = torch.randn(16, 4, generator=g)
            noise = torch.randn(16, 1) * 0.01          # the global generator, restored too
            return ((model(x) - x.sum(1, keepdim=True) - noise) ** 2).mean()

        fit(model.parameters(), loss_fn, steps=steps, lr=1e-2, description="toy",
            generators=(g,), state=model)
        student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        distill(teacher, {"2": torch.nn.Linear(8, 8)}, lambda s: torch.randn(
            8, 4, generator=torch.Generator().manual_seed(100 + s)), steps=steps)
        torch.save({"model": model.state_dict(), "student": student.state_dict()}, path)

    return make


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_a_make_stopped_midway_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFRAME_CHECKPOINT_SECONDS", "0")        # save after every step
    ref = ArtifactCache(tmp_path / "ref").get_or_create("toy", {"k": 1}, _toy_make(None),
                                                        suffix=".pt")
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(Stop):
        cache.get_or_create("toy", {"k": 1}, _toy_make(stop_at=13), suffix=".pt")
    partial = cache.path("toy", {"k": 1}, ".pt").with_name(
        cache.path("toy", {"k": 1}, ".pt").name + ".partial")
    assert (partial / "loop-0.pt").is_file()
    saved = torch.load(partial / "loop-0.pt", weights_only=True)
    assert saved["step"] == 12
    out = cache.get_or_create("toy", {"k": 1}, _toy_make(None), suffix=".pt")
    assert not partial.exists()                      # removed once the artifact is written
    a, b = _state(ref), _state(out)
    for part in ("model", "student"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_a_checkpoint_of_another_loop_is_ignored(tmp_path):
    lc = checkpoint.LoopCheckpoint(tmp_path / "loop-0.pt", every=0)
    w = torch.nn.Linear(3, 3)
    lc.save(5, list(w.parameters()))
    other = torch.nn.Linear(4, 4)
    assert lc.restore(list(other.parameters())) == (0, {})
    assert lc.restore(list(w.parameters()))[0] == 5


@pytest.mark.slow
def test_an_ens_run_stopped_during_teacher_training_resumes_it(tmp_path):
    """Ctrl-C while the teacher trains; resume continues its training (the cache has a
    checkpoint, not 12 KB of nothing) and gives the teacher of an uninterrupted run."""
    doc = {
        "name": "ckpt", "seed": 0,
        "search_space": {"name": "hybrid_unet", "params": {
            "preset": "tiny", "granularity": "stage", "input_size": 16,
            "data": {"short_side": 48, "val_size": 32, "patch": 16},
            "teacher": {"steps": 400, "batch_size": 2}, "distill": {"steps": 5, "batch_size": 2}}},
        "objectives": [{"name": "psnr"}, {"name": "transformer_count"}],
        "budget": {"trials": 2}, "references": False,
    }
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NASFRAME_CHECKPOINT_SECONDS": "0"}

    def cli(*args, **kw):
        return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900, **kw)

    assert cli("run", str(exp), "--out", str(tmp_path / "ref"), "--quiet",
               "--no-export").returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nasframe", "run", str(exp), "--out", str(run),
                             "--quiet", "--no-export"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    teacher_dir = run / "cache" / "hybrid_unet" / "teacher"
    deadline = time.time() + 600
    while time.time() < deadline:
        ckpts = list(teacher_dir.glob("*.partial/loop-0.pt")) if teacher_dir.exists() else []
        if ckpts and torch.load(ckpts[0], weights_only=True)["step"] >= 100:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = torch.load(next(teacher_dir.glob("*.partial/loop-0.pt")), weights_only=True)["step"]
    assert 100 <= step < 400
    res = cli("resume", str(run), "--quiet", "--no-export")
    assert res.returncode == 0, res.stderr
    ref = next((tmp_path / "ref" / "cache" / "hybrid_unet" / "teacher").glob("*.pt"))
    got = next(teacher_dir.glob("*.pt"))
    assert ref.name == got.name
    a, b = _state(ref), _state(got)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(teacher_dir.glob("*.partial"))
