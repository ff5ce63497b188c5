"""A stand-in for the ``qai_hub`` module, for tests only: jobs kept in files, no network.

Qualcomm AI Hub cannot be reached from the machines nasframe is tested on, so
the ``qai_hub`` latency backend is tested against this fake, selected by the
environment variable ``NASFRAME_QAI_HUB_FAKE=DIR`` (without it the backend
imports the real ``qai_hub``). It keeps the shapes of the real client that the
backend uses — ``Client().config``, ``Device(name)``,
``submit_compile_job(model, device, name=, input_specs=, options=)`` returning a
compile job with ``job_id``, ``url``, ``get_status()`` (a status with ``code``,
``message``, ``success``, ``failure``, ``finished``) and ``get_target_model()``;
``submit_inference_job(model, device, name=, options=, profile=True)`` (and the
deprecated ``submit_profile_job``) returning an inference job whose
``download_profile()`` is ``{"execution_summary": {"estimated_inference_time":
microseconds, ...}, "execution_detail": [layers]}``; ``get_job(job_id)``;
``get_devices()``; a model given as a directory (one ``.onnx`` and its ``.data``); the errors
``UserError``, ``InternalError``, ``RateLimitedError`` — and keeps its state in
``DIR`` so that several processes (a run killed with SIGKILL, then its resume) see
the same jobs:

``DIR/config.json`` (optional; written by the test)
    ``compile_seconds`` / ``profile_seconds``: how long a job runs (default 0.3);
    ``fail_compile``: submission indices (0-based, over compile jobs) whose
    compile fails; ``transient``: that many API calls raise ``InternalError``
    first; ``token``: false to behave as if no token were configured;
    ``us_per_byte``: the fake's latency model (microseconds per byte of the
    uploaded model, plus 500 us); ``devices``: the device list (default
    :data:`DEVICES`); ``offline``: true to fail ``get_devices`` as an unreachable
    service does.
``DIR/submissions.jsonl``
    one line per job submitted (what a real account would be billed for).
``DIR/jobs/ID.json``
    each job's state, including when a client first saw it finished.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "NASFRAME_QAI_HUB_FAKE"
WEB_URL = "https://workbench.aihub.qualcomm.com/"
__version__ = "0.56.0-fake"
DEVICES = ("Samsung Galaxy S25 (Family)", "Samsung Galaxy S24 (Family)", "Snapdragon 8 Elite QRD")


class Error(Exception):
    pass


class UserError(Error):
    pass


class InternalError(Error):
    pass


class RateLimitedError(Error):
    pass


@dataclass
class Device:
    name: str = ""
    os: str = ""
    attributes: str | list[str] = field(default_factory=list)


class JobStatus:
    """The real ``qai_hub.JobStatus`` in shape: ``code`` is the state's name."""

    RUNNING = ("OPTIMIZING_MODEL", "PROVISIONING_DEVICE", "MEASURING_PERFORMANCE")

    def __init__(self, code: str, message: str | None = None):
        self.code, self.message = code, message

    @property
    def success(self) -> bool:
        return self.code == "SUCCESS"

    @property
    def failure(self) -> bool:
        return self.code == "FAILED"

    @property
    def finished(self) -> bool:
        return self.success or self.failure

    @property
    def running(self) -> bool:
        return self.code in self.RUNNING

    @property
    def pending(self) -> bool:
        return self.code == "CREATED"

    def __repr__(self) -> str:
        return f"JobStatus(code={self.code!r}, message={self.message!r})"


class _State:
    """The fake service: files under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def config(self) -> dict[str, Any]:
        path = self.root / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def call(self) -> None:
        """Count an API call; the first ``transient`` ones raise InternalError."""
        limit = int(self.config().get("transient", 0))
        if not limit:
            return
        path = self.root / "calls"
        n = int(path.read_text()) if path.exists() else 0
        _write(path, str(n + 1))
        if n < limit:
            raise InternalError("The Qualcomm AI Hub service is temporarily unavailable "
                                "(fake transient error).")

    def job(self, job_id: str) -> dict[str, Any]:
        path = self.root / "jobs" / f"{job_id}.json"
        if not path.exists():
            raise UserError(f"Job {job_id} does not exist or you do not have access to it.")
        return json.loads(path.read_text())

    def save(self, job: dict[str, Any]) -> None:
        _write(self.root / "jobs" / f"{job['job_id']}.json", json.dumps(job))

    def new_job(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        log = self.root / "submissions.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        index = sum(json.loads(line)["kind"] == kind for line in lines)
        for n in itertools.count(len(lines)):
            job_id = "j" + hashlib.sha256(f"{n}".encode()).hexdigest()[:8]
            if not (self.root / "jobs" / f"{job_id}.json").exists():
                break
        cfg = self.config()
        job = {"job_id": job_id, "kind": kind, "index": index, "created": time.time(),
               "seconds": float(cfg.get(f"{kind}_seconds", 0.3)), **record}
        if kind == "compile" and index in cfg.get("fail_compile", []):
            job["failure"] = ("Failed to compile model: Unsupported operator 'FakeOp' for "
                              "target runtime (fake failure).")
        self.save(job)
        with log.open("a") as f:
            f.write(json.dumps({"kind": kind, "job_id": job_id, "index": index,
                                "time": job["created"], **record}) + "\n")
        return job


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Model:
    def __init__(self, model_id: str, name: str = ""):
        self.model_id, self.name = model_id, name

    def __repr__(self) -> str:
        return f"Model(model_id={self.model_id!r})"


class Job:
    def __init__(self, state: _State, record: dict[str, Any]):
        self._state, self._record = state, record
        self.job_id = record["job_id"]
        self.name = record.get("name", "")
        self.device = Device(record.get("device", ""))

    @property
    def url(self) -> str:
        return f"{WEB_URL}jobs/{self.job_id}/"

    def get_status(self) -> JobStatus:
        self._state.call()
        rec = self._state.job(self.job_id)
        elapsed = time.time() - rec["created"]
        if elapsed < rec["seconds"]:
            return JobStatus("CREATED" if elapsed < rec["seconds"] / 4 else
                             ("OPTIMIZING_MODEL" if rec["kind"] == "compile"
                              else "MEASURING_PERFORMANCE"))
        if "seen_finished" not in rec:
            rec["seen_finished"] = time.time()
            self._state.save(rec)
        if "failure" in rec:
            return JobStatus("FAILED", rec["failure"])
        return JobStatus("SUCCESS")

    def wait(self, timeout: int | None = None) -> JobStatus:
        while not (status := self.get_status()).finished:
            time.sleep(0.05)
        return status


class CompileJob(Job):
    def get_target_model(self) -> Model | None:
        status = self.wait()
        if not status.success:
            return None
        return Model(f"m{self.job_id[1:]}", self.name)


class InferenceJob(Job):
    def download_profile(self) -> dict[str, Any]:
        if not self.wait().success:
            return {}
        rec = self._state.job(self.job_id)
        us = int(rec["latency_us"])
        return {
            "execution_summary": {
                "estimated_inference_time": us,
                "estimated_inference_peak_memory": 12_582_912,
                "first_load_time": 40 * us,
                "first_load_peak_memory": 25_165_824,
                "warm_load_time": 10 * us,
                "warm_load_peak_memory": 16_777_216,
                "compile_time": 0,
                "compile_peak_memory": 0,
                "all_inference_times": [us] * 5,
            },
            "execution_detail": [
                {"name": "conv_0", "type": "Conv2d", "compute_unit": "NPU",
                 "execution_time": us // 2, "execution_cycles": 1000},
                {"name": "matmul_0", "type": "MatMul", "compute_unit": "NPU",
                 "execution_time": us // 4, "execution_cycles": 500},
                {"name": "softmax_0", "type": "Softmax", "compute_unit": "CPU",
                 "execution_time": us // 4, "execution_cycles": 500},
            ],
        }


ProfileJob = InferenceJob


class ClientConfig:
    def __init__(self, api_token: str, api_url: str = "", web_url: str = WEB_URL,
                 verbose: bool = False):
        self.api_token, self.api_url, self.web_url, self.verbose = api_token, api_url, web_url, verbose


class Client:
    """``qai_hub.Client`` in shape, over the files of :envvar:`NASFRAME_QAI_HUB_FAKE`."""

    def __init__(self, config: ClientConfig | None = None, profile: str | None = None):
        root = os.environ.get(ENV)
        if not root:
            raise RuntimeError(f"the fake qai_hub needs {ENV}=DIR")
        self._state = _State(root)
        self._config = config

    @property
    def config(self) -> ClientConfig:
        if self._config is None:
            if self._state.config().get("token", True) is False:
                raise UserError("Failed to load client configuration file.\n"
                                "~/.qai_hub/client.ini not found. (fake)")
            self._config = ClientConfig(api_token="fake-token")
        return self._config

    def submit_compile_job(self, model: str | Path, device: Device, name: str | None = None,
                           input_specs: dict[str, Any] | None = None, options: str = "",
                           **_: Any) -> CompileJob:
        _ = self.config
        self._state.call()
        path = Path(model)
        if path.is_dir():       # AI Hub's directory form: one .onnx (+ its .data)
            onnx_files = sorted(path.glob("*.onnx"))
            if len(onnx_files) != 1:
                raise UserError(f"Model directory '{model}' must contain exactly one .onnx file.")
            data = b"".join(f.read_bytes() for f in sorted(path.iterdir()) if f.is_file())
        elif not path.is_file():
            raise UserError(f"Model file {model} does not exist.")
        else:
            data = path.read_bytes()
        cfg = self._state.config()
        rec = self._state.new_job("compile", {
            "name": name or path.stem, "device": device.name, "options": options,
            "model_sha": hashlib.sha256(data).hexdigest()[:16], "model_bytes": len(data),
            "input_specs": {k: [list(v[0]), v[1]] for k, v in (input_specs or {}).items()},
            "latency_us": int(500 + float(cfg.get("us_per_byte", 0.05)) * len(data))})
        return CompileJob(self._state, rec)

    def submit_profile_job(self, model: Model, device: Device, name: str | None = None,
                           options: str = "", **_: Any) -> InferenceJob:
        _ = self.config
        self._state.call()
        if not isinstance(model, Model):
            raise UserError("submit_profile_job: the fake takes the target model of a compile job")
        source = self._state.job("j" + model.model_id[1:])
        rec = self._state.new_job("profile", {
            "name": name or source.get("name", ""), "device": device.name, "options": options,
            "model_id": model.model_id, "latency_us": source["latency_us"]})
        return InferenceJob(self._state, rec)

    def submit_inference_job(self, model: Model, device: Device, inputs: Any = None,
                             name: str | None = None, options: str = "", profile: bool = True,
                             **_: Any) -> InferenceJob:
        return self.submit_profile_job(model, device, name=name, options=options)

    def get_devices(self, name: str = "", os: str = "", attributes: Any = None) -> list[Device]:
        _ = self.config
        cfg = self._state.config()
        if cfg.get("offline"):
            raise ConnectionError("Failed to establish a new connection (fake offline)")
        self._state.call()
        names = cfg.get("devices", list(DEVICES))
        return [Device(n) for n in names if not name or n == name]

    def get_job(self, job_id: str) -> Job:
        _ = self.config
        self._state.call()
        rec = self._state.job(job_id)
        return (CompileJob if rec["kind"] == "compile" else InferenceJob)(self._state, rec)


def submissions(root: str | Path) -> list[dict[str, Any]]:
    """Every job submitted to the fake at ``root`` (for tests)."""
    log = Path(root) / "submissions.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def jobs(root: str | Path) -> list[dict[str, Any]]:
    """Every job's record (``created``, ``seen_finished``, ...)."""
    return [json.loads(p.read_text()) for p in sorted((Path(root) / "jobs").glob("*.json"))]
