"""The ``qai_hub`` latency backend against the file-backed fake client (the service is not
reachable here): jobs in flight together, re-attach after a real ``kill -9`` of a run, the
cache across runs, a failing compile failing only its trial, no token = exit 2 at validate."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli_here, run_cli
from nasframe_objectives import qai_hub_fake


def _experiment(tmp_path: Path, trials: int = 3, batch: int = 3, **options) -> Path:
    doc = {
        "name": "hub",
        "seed": 3,
        "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
        "objectives": [
            {"name": "params"},
            {"name": "latency", "params": {"backend": "qai_hub", "options": {
                "poll_every": 0.1, "backoff": 0.01, "cache_dir": str(tmp_path / "hub-cache"),
                "runtime": "tflite", **options}}},
        ],
        "strategy": {"name": "random"},
        "budget": {"trials": trials},
        "batch_size": batch,
        "references": False,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _fake(tmp_path: Path, **config) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "fake-hub"
    root.mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    return root, {qai_hub_fake.ENV: str(root)}


def _trials(run: Path) -> list[dict]:
    con = sqlite3.connect(run / "trials.db")
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT number, status, \"values\", provenance, error, jobs, attempt "
                           "FROM trials ORDER BY number").fetchall()
    finally:
        con.close()
    return [{"number": r["number"], "status": r["status"], "values": json.loads(r["values"] or "{}"),
             "provenance": json.loads(r["provenance"] or "{}"), "error": r["error"],
             "jobs": json.loads(r["jobs"] or "{}"), "attempt": r["attempt"]} for r in rows]


def _max_overlap(jobs: list[dict]) -> int:
    """The most jobs in flight at one moment (submitted, not yet seen finished)."""
    events = sorted([(j["created"], 1) for j in jobs] + [(j["seen_finished"], -1) for j in jobs])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
def test_jobs_in_flight_together_values_and_cache_across_runs(tmp_path):
    fake, env = _fake(tmp_path, compile_seconds=1.0, profile_seconds=1.0)
    exp = _experiment(tmp_path)
    res = run_cli("run", str(exp), "--out", str(tmp_path / "run1"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    rows = _trials(tmp_path / "run1")
    assert [r["status"] for r in rows] == ["complete"] * 3
    subs = qai_hub_fake.submissions(fake)
    compiles = [s for s in subs if s["kind"] == "compile"]
    profiles = [s for s in subs if s["kind"] == "profile"]
    assert len(compiles) == len(profiles) == 3
    assert all(s["device"] == "Samsung Galaxy S25 (Family)" for s in subs)
    assert all(s["options"] == "--target_runtime tflite" for s in compiles)
    # one input, named as the model's forward names it, with the example's shape
    assert all(list(s["input_specs"].values()) == [[[1, 3, 16, 16], "float32"]] for s in compiles)
    # the three jobs of the batch were in flight at the same time
    records = qai_hub_fake.jobs(fake)
    assert _max_overlap([j for j in records if j["kind"] == "compile"]) == 3
    assert _max_overlap([j for j in records if j["kind"] == "profile"]) == 3
    by_id = {j["job_id"]: j for j in records}
    for r in rows:
        prov = r["provenance"]["latency"]
        d = prov["details"]
        assert prov["kind"] == "measured" and prov["backend"] == "qai_hub"
        assert prov["device"] == "Samsung Galaxy S25 (Family) (Qualcomm AI Hub)"
        # the value is the profile's estimated_inference_time (us) in ms
        assert r["values"]["latency"] == pytest.approx(by_id[d["profile_job"]]["latency_us"] / 1e3)
        assert d["profile_url"] == f"https://workbench.aihub.qualcomm.com/jobs/{d['profile_job']}/"
        assert d["target_runtime"] == "tflite" and d["cached"] is False
        assert d["compute_units"] == {"NPU": 2, "CPU": 1}
        assert r["jobs"]["latency"]["job"]["profile_job"] == d["profile_job"]
    # a second run of the same experiment: every value from the cache, nothing paid again
    res = run_cli("run", str(exp), "--out", str(tmp_path / "run2"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    assert len(qai_hub_fake.submissions(fake)) == 6
    again = _trials(tmp_path / "run2")
    assert [r["values"] for r in again] == [r["values"] for r in rows]
    assert all(r["provenance"]["latency"]["details"]["cached"] is True for r in again)
    # another device is another cache entry
    other = _experiment(tmp_path, trials=1, batch=1, device="Snapdragon 8 Elite QRD")
    res = run_cli("run", str(other), "--out", str(tmp_path / "run3"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    assert len(qai_hub_fake.submissions(fake)) == 8


@pytest.mark.slow
def test_kill_9_while_jobs_run_then_resume_reattaches_without_paying_twice(tmp_path):
    fake, env = _fake(tmp_path, compile_seconds=2.0, profile_seconds=6.0)
    exp = _experiment(tmp_path, trials=5, batch=3)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nasframe", "run", str(exp), "--out", str(run),
                             "--quiet", "--no-export"], cwd=ROOT, env=dict(os.environ, **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while True:     # kill once the first batch's profile jobs (the second stage) are submitted
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
        assert time.time() < deadline, "no profile job was submitted in time"
        kinds = [s["kind"] for s in qai_hub_fake.submissions(fake)]
        if kinds.count("profile") >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = qai_hub_fake.submissions(fake)
    rows = _trials(run)
    waiting = [r for r in rows if r["status"] == "running"]
    assert len(waiting) == 3
    # both stages' job ids were stored with their trials at once
    profile_ids = {s["job_id"] for s in before if s["kind"] == "profile"}
    assert {r["jobs"]["latency"]["job"]["profile_job"] for r in waiting} == profile_ids
    assert {r["jobs"]["latency"]["job"]["compile_job"] for r in waiting} == \
        {s["job_id"] for s in before if s["kind"] == "compile"}
    res = run_cli("resume", str(run), "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    rows = _trials(run)
    assert [r["status"] for r in rows] == ["complete"] * 5
    subs = qai_hub_fake.submissions(fake)
    assert subs[:len(before)] == before
    # the killed trials got the jobs submitted before the kill: none submitted again
    killed = {r["number"]: r for r in rows if r["number"] in {w["number"] for w in waiting}}
    assert {r["provenance"]["latency"]["details"]["profile_job"] for r in killed.values()} \
        == profile_ids
    assert all(r["provenance"]["latency"]["details"]["cached"] is False for r in killed.values())
    compiles = [s for s in subs if s["kind"] == "compile"]
    assert len(compiles) == 5 and len({s["model_sha"] for s in compiles}) == 5
    assert len([s for s in subs if s["kind"] == "profile"]) == 5
    # waiting on a device job when killed is not the trial's fault: no attempt counted
    assert [r["attempt"] for r in rows] == [1] * 5


def test_a_failing_compile_fails_only_its_trial_with_the_message_and_url(tmp_path):
    fake, env = _fake(tmp_path, compile_seconds=0.2, profile_seconds=0.2, fail_compile=[1],
                      transient=2)
    exp = _experiment(tmp_path, trials=3, batch=3)
    res = cli_here("run", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    rows = _trials(tmp_path / "run")
    assert [r["status"] for r in rows].count("complete") == 2
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1
    job = [s for s in qai_hub_fake.submissions(fake) if s["kind"] == "compile"][1]["job_id"]
    err = failed[0]["error"]
    assert "objective 'latency': device job: DeviceJobError: compile job" in err
    assert "Unsupported operator 'FakeOp'" in err
    assert f"(https://workbench.aihub.qualcomm.com/jobs/{job}/)" in err
    # the two transient errors were retried, and the failure was not cached
    assert (fake / "calls").read_text().strip().isdigit()
    assert len(list((tmp_path / "hub-cache").glob("*.json"))) == 2


def test_transient_errors_beyond_the_retries_fail_the_trial_with_the_cause(tmp_path):
    fake, env = _fake(tmp_path, transient=100)
    # the device check off: its one call (a warning on a transient error) is not the subject
    exp = _experiment(tmp_path, trials=1, batch=1, retries=2, check_device=False)
    res = cli_here("run", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    (row,) = _trials(tmp_path / "run")
    assert row["status"] == "failed"
    assert "qai_hub submit_compile_job: InternalError after 3 tries" in row["error"]
    assert int((fake / "calls").read_text()) == 3


def test_no_token_is_exit_2_at_validate_naming_the_fix(tmp_path):
    pytest.importorskip("qai_hub")
    exp = _experiment(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in (qai_hub_fake.ENV, "QAI_HUB_API_TOKEN",
                                                            "QAIHUB_CLIENT_INI")}
    env["HOME"] = str(tmp_path / "home")        # no ~/.qai_hub/client.ini there
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "nasframe", "validate", str(exp)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert time.time() - start < 60      # no network retries: the config file is all it reads
    assert "objectives[1].params.options.token: no Qualcomm AI Hub API token" in res.stderr
    assert "qai-hub configure --api_token" in res.stderr and "Traceback" not in res.stderr
    # a token in the environment is enough to validate (AI Hub's device list as cached by
    # an earlier check: offline, the check waits 8 s and warns, as test_qai_hub_client shows)
    cache = tmp_path / "hub-cache"
    cache.mkdir(exist_ok=True)
    (cache / "devices.json").write_text(json.dumps({"time": time.time(),
                                                    "names": ["Samsung Galaxy S25 (Family)"]}))
    res = subprocess.run([sys.executable, "-m", "nasframe", "validate", str(exp)], cwd=ROOT,
                         env={**env, "QAI_HUB_API_TOKEN": "abc"}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


def test_no_token_with_the_fake_too(tmp_path):
    _, env = _fake(tmp_path, token=False)
    res = cli_here("validate", str(_experiment(tmp_path)), env=env)
    assert res.returncode == 2
    assert "qai-hub configure --api_token" in res.stderr


def test_bad_options_name_the_field():
    from nasframe.errors import ConfigError
    from nasframe.plugins import get_plugins

    with pytest.raises(ConfigError, match=r"objectives\[0\]\.params\.options\.runtime: Input should "
                                          r"be 'qnn_context_binary', 'tflite' or 'onnx'"):
        get_plugins().objectives.create("latency", {"backend": "qai_hub",
                                                    "options": {"runtime": "coreml"}},
                                        where="objectives[0]")


@pytest.mark.slow
def test_the_nanosd_device_example_validates_only_with_a_token(tmp_path):
    pytest.importorskip("qai_hub")
    example = ROOT / "examples" / "nanosd_device.yaml"
    env = {k: v for k, v in os.environ.items() if k not in (qai_hub_fake.ENV, "QAI_HUB_API_TOKEN",
                                                            "QAIHUB_CLIENT_INI")}
    env["HOME"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-m", "nasframe", "validate", str(example)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "objectives[3].params.options.token" in res.stderr
    assert "qai-hub configure --api_token" in res.stderr
    config = tmp_path / ".qai_hub" / "client.ini"     # what `qai-hub configure` writes
    config.parent.mkdir()
    config.write_text("[api]\napi_token = abc\napi_url = https://app.aihub.qualcomm.com\n"
                      "web_url = https://app.aihub.qualcomm.com\n")
    res = subprocess.run([sys.executable, "-m", "nasframe", "validate", str(example)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "latency (min)" in res.stdout


@pytest.mark.slow
def test_the_quantised_quad_graph_goes_to_the_hub_with_its_adapter_inputs(tmp_path):
    """latency with graph: quantised on qai_hub uploads the QDQ graph (the profile is in the
    graph: what AI Hub compiles to a QNN context binary), with every adapter tensor an input."""
    pytest.importorskip("skimage")
    import hashlib

    from nasframe.plugins import get_plugins

    fake, env = _fake(tmp_path, compile_seconds=0.2, profile_seconds=0.2)
    small = get_plugins().search_spaces.get("quad").small_params
    doc = {
        "name": "hubq", "seed": 0,
        "search_space": {"name": "quad", "params": {**small, "ranks": [2]}},
        "objectives": [{"name": "deploy_memory"},
                       {"name": "latency", "params": {"backend": "qai_hub", "graph": "quantised",
                                                      "options": {"poll_every": 0.1,
                                                                  "cache_dir": str(tmp_path / "hc")}}}],
        "strategy": {"name": "random"}, "budget": {"trials": 1}, "references": False,
    }
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    res = run_cli("run", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--no-export", env=env)
    assert res.returncode == 0, res.stderr
    (row,) = _trials(tmp_path / "run")
    assert row["status"] == "complete", row["error"]
    (compile_job,) = [s for s in qai_hub_fake.submissions(fake) if s["kind"] == "compile"]
    assert "--target_runtime qnn_context_binary" in compile_job["options"]
    names = list(compile_job["input_specs"])
    assert names[0] == "x" and len(names) > 1 and all(n.startswith("lora.") for n in names[1:])
    (qdq,) = (tmp_path / "run" / "cache" / "exports").glob("*-qdq.onnx")
    assert compile_job["model_sha"] == hashlib.sha256(qdq.read_bytes()).hexdigest()[:16]
    assert row["provenance"]["latency"]["details"]["export"]["graph"] == "quantised"
