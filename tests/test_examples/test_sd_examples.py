"""The diffusion examples, shrunk for CI: validate as written, run, resume, evaluate references.

The files themselves are used; only sizes (latent, fidelity samples,
distillation steps, budget) are overridden so that each runs in seconds.
"""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, run_cli
from nasframe.config import config_from_dict
from nasframe.runner import Runner, resume_run, run_experiment
from nasframe.store import TrialStore

pytest.importorskip("botorch")

EXAMPLES = ("sd_eps_bo", "nanosd_family", "sd15_references", "tocsr")


def _small(name: str, trials: int) -> dict:
    cfg = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    p = cfg["search_space"]["params"]
    p.update(latent_size=8, fidelity={"samples": 2, "batch_size": 2})
    if "train" in p.get("teacher", {}):          # the trained teacher, at the smallest training
        p["teacher"]["train"] = {"steps": 2, "vae_steps": 1, "batch_size": 2, "vae_crop": 16,
                                 "latent_size": 8, "pool": 4, "expand_steps": 2,
                                 "expand_vae_steps": 1}
    if "surrogate_steps" in p:
        p["surrogate_steps"] = 3
    for o in cfg["objectives"]:
        if o["name"] == "fidelity":
            o.setdefault("params", {})["distill"] = {"steps": 3, "batch_size": 2}
    cfg["budget"] = {"trials": trials}
    cfg["strategy"]["params"]["n_initial"] = 3
    cfg["strategy"]["params"]["candidates"] = 256
    cfg.pop("output", None)
    cfg.pop("cache_dir", None)
    return cfg


@pytest.mark.parametrize("name", [EXAMPLES[0], *(pytest.param(n, marks=pytest.mark.slow)
                                                  for n in EXAMPLES[1:])])
def test_example_files_validate_as_written(name):
    out = run_cli("validate", str(ROOT / "examples" / f"{name}.yaml"))
    assert out.returncode == 0, out.stderr


def _sequence(run_dir):
    store = TrialStore.open(run_dir)
    try:
        return [(t.arch.id, t.status) for t in store.trials()]
    finally:
        store.close()


@pytest.mark.slow
def test_sd_eps_bo_resumes_the_same_search(tmp_path, monkeypatch):
    cfg = _small("sd_eps_bo", trials=11)          # 5 references + 3 random + 3 from the GP
    summary = run_experiment(config_from_dict(cfg), tmp_path / "full", quiet=True)
    assert summary.trials == 11 and summary.failed == 0
    from nasframe import experiment

    calls = {"n": 0}
    original = experiment.Experiment.evaluate

    def cut(self, trial, ctx, skip_infeasible=None):
        calls["n"] += 1
        if calls["n"] == 10:                      # inside the GP-driven part
            raise KeyboardInterrupt
        return original(self, trial, ctx, skip_infeasible)

    monkeypatch.setattr(experiment.Experiment, "evaluate", cut)
    with pytest.raises(KeyboardInterrupt):
        Runner.start(config_from_dict(cfg), tmp_path / "cut", quiet=True).run()
    monkeypatch.setattr(experiment.Experiment, "evaluate", original)
    assert resume_run(tmp_path / "cut", quiet=True).trials == 11
    assert _sequence(tmp_path / "cut") == _sequence(tmp_path / "full")
    # distilled pairs were cached and reused by the resumed run
    assert list((tmp_path / "cut" / "cache" / "sd_unet" / "pairs").glob("*.pt"))


@pytest.mark.parametrize("name", ("sd_eps_bo", "nanosd_family", "tocsr"))
def test_cpu_examples_use_the_trained_teacher(name):
    cfg = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    assert cfg["search_space"]["params"]["teacher"]["train"]["steps"] > 0
    assert cfg["cache_dir"]                       # trained once, shared by the examples


@pytest.mark.slow
def test_nanosd_family_yields_a_front_and_a_pick(tmp_path):
    path = tmp_path / "nanosd.yaml"
    path.write_text(yaml.safe_dump(_small("nanosd_family", trials=8)))
    out = run_cli("run", str(path), "--out", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    front = pareto["front"]
    assert len(front) >= 2
    assert pareto["pick"] and "fidelity >=" in pareto["pick"]["rule"]
    assert (tmp_path / "run" / "pareto.png").exists()
    ids = {m["id"] for m in front}
    assert pareto["pick"]["id"] in ids


@pytest.mark.slow
def test_evaluate_prints_full_size_bk_sdm_base(tmp_path):
    cfg = yaml.safe_load((ROOT / "examples" / "sd15_references.yaml").read_text())
    # the example's counts as written, at an 8x8 latent (the parameter count does not depend on it)
    cfg["objectives"][1]["params"] = {"input_shape": [1, 4, 8, 8]}
    path = tmp_path / "sd15.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli("evaluate", str(path), "--arch", "bk_sdm_base", "--out", str(tmp_path / "r"),
                  timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["origin"] == "reference:bk_sdm_base"
    params = doc["values"]["params"]
    assert params["provenance"]["details"]["count"] == 579_384_964
    assert doc["values"]["gmacs"]["value"] > 0
    assert "scaled_dot_product_attention" in doc["values"]["gmacs"]["provenance"]["details"]["includes"]


@pytest.mark.slow
def test_tocsr_searches_the_expanded_model_with_surrogates(tmp_path):
    cfg = _small("tocsr", trials=8)
    run_dir = tmp_path / "run"
    summary = run_experiment(config_from_dict(cfg), run_dir, quiet=True)
    assert summary.trials == 8 and summary.failed == 0
    assert list((run_dir / "cache" / "sd_unet" / "expanded").glob("*.safetensors"))
    from nasframe.results import load_run

    run = load_run(run_dir)
    archs = [t.arch for t in run.trial_list()]
    assert any("surrogate" in dict(a).values() for a in archs)
    import subprocess
    import sys

    # SR adaptation + one-step distillation of the run's pick (surrogates loaded from the
    # run's cache), at the smallest settings; then the report shows the SR table
    tiny = {"pool": 8, "steps": 3, "batch_size": 4, "sample_steps": 2, "distill_steps": 3,
            "distill_targets": 4, "eval_images": 2, "eval_size": 64, "latency_repeats": 1,
            "fidelity_steps": 3, "fidelity_width": 8, "fidelity_blocks": 1}
    sr = subprocess.run([sys.executable, "-m", "nasframe_search_spaces.sd_unet.sr", str(run_dir),
                         *(a for k, v in tiny.items() for a in ("--set", f"{k}={v}"))],
                        capture_output=True, text=True, timeout=600)
    assert sr.returncode == 0, sr.stderr
    doc = json.loads((run_dir / "sr.json").read_text())
    assert doc["backbone"]["origin"].startswith("pick of") and doc["backbone"]["id"] == run.pick_result.trial.arch.id
    assert doc["gmacs"]["teacher_per_image"] > doc["gmacs"]["student_per_image"]
    rep = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tocsr_report.py"), str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr
    assert "params" in rep.stdout and "x" in rep.stdout
    assert "one-step student" in rep.stdout and "SR model, 2 steps" in rep.stdout
    assert "one-step student + fidelity decoder" in rep.stdout
