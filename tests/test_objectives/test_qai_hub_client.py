"""The ``qai_hub`` latency backend against the REAL qai-hub client: only its REST layer
(``qai_hub.public_rest_api``, the functions that make the HTTP calls) is replaced by an
in-memory service answering in AI Hub's protobuf messages, so qai-hub's own ``Client``,
model upload (zipping a directory), ``Job`` objects, status handling and profile parsing
run. HTTP itself is forbidden. (The module-level fake, ``NASFRAME_QAI_HUB_FAKE``, serves
the CLI tests in test_qai_hub.py.)"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch

qai_hub = pytest.importorskip("qai_hub", reason="qai-hub is not installed (pip install 'nasframe[hub]')")
pytest.importorskip("onnxruntime")

from qai_hub import public_api_pb2 as pb  # noqa: E402
from qai_hub import public_rest_api as rest  # noqa: E402

from nasframe.backends import DeviceJobError  # noqa: E402
from nasframe.params import ParamError  # noqa: E402
from nasframe.testing import plugin_context  # noqa: E402
from nasframe_objectives.qai_hub_backend import QaiHubBackend  # noqa: E402

DEVICES = ("Samsung Galaxy S25 (Family)", "Samsung Galaxy S24 (Family)", "Snapdragon 8 Elite QRD")
S = pb.JobState


class FakeService:
    """AI Hub behind ``qai_hub.public_rest_api``: jobs advance one state per status call."""

    def __init__(self, polls: int = 2, fail_compile: str | None = None, offline: bool = False):
        self.calls: list[str] = []
        self.uploads: list[dict] = []
        self.jobs: dict[str, dict] = {}
        self.polls, self.fail_compile, self.offline = polls, fail_compile, offline

    def install(self, monkeypatch) -> FakeService:
        for name in ("get_device_list", "create_and_upload_model", "create_compile_job",
                     "create_inference_job", "create_profile_job", "get_job", "get_job_results",
                     "get_model"):
            monkeypatch.setattr(rest, name, self._recorded(name, getattr(self, name)))

        def no_http(*a, **k):
            raise AssertionError("the test made a real HTTP call")
        monkeypatch.setattr(rest, "create_session", no_http)
        return self

    def _recorded(self, name, fn):
        def call(config, *args, **kwargs):
            assert config.api_token == "test-token"
            self.calls.append(name)
            return fn(*args, **kwargs)
        return call

    # -- the REST functions qai-hub's Client calls ------------------------------------
    def get_device_list(self, name="", os="", attributes=None, select=False):
        if self.offline:
            import requests

            raise requests.exceptions.ConnectionError("Failed to establish a new connection")
        return pb.DeviceList(devices=[pb.Device(name=n, os="15", attributes=["vendor:qualcomm", "framework:qnn", "framework:onnx", "framework:tflite"])
                                      for n in DEVICES if not name or n == name])

    def create_and_upload_model(self, path, name, model_type, verbose=False, is_directory=False,
                                project_id=None, **_):
        entry = {"name": name, "is_directory": is_directory, "type": pb.ModelType.Name(model_type)}
        if is_directory:
            with zipfile.ZipFile(path) as z:
                entry["files"] = sorted(Path(n).name for n in z.namelist() if not n.endswith("/"))
        self.uploads.append(entry)
        return pb.CreateUpdateResponse(id=f"m{len(self.uploads)}")

    def _new(self, kind: str, job_pb) -> pb.CreateUpdateResponse:
        job_id = f"j{kind[0]}{len(self.jobs) + 1}"
        self.jobs[job_id] = {"kind": kind, "pb": job_pb, "left": self.polls}
        return pb.CreateUpdateResponse(id=job_id)

    def create_compile_job(self, compile_job_pb, project_id=None):
        return self._new("compile", compile_job_pb)

    def create_inference_job(self, inference_job_pb, project_id=None):
        return self._new("inference", inference_job_pb)

    def create_profile_job(self, *a, **k):
        raise AssertionError("the deprecated profile-job path was taken")

    def get_job(self, job_id):
        job = self.jobs[job_id]
        if job["left"] > 0:
            job["left"] -= 1
        done = job["left"] == 0
        failed = done and job["kind"] == "compile" and job["pb"].name == self.fail_compile
        state = S.JOB_STATE_FAILED if failed else S.JOB_STATE_DONE if done else \
            S.JOB_STATE_OPTIMIZING_MODEL if job["kind"] == "compile" else S.JOB_STATE_MEASURING_PERFORMANCE
        src = job["pb"]
        if job["kind"] == "compile":
            return pb.Job(compile_job=pb.CompileJob(
                compile_job_id=job_id, job_state=state, name=src.name, model=src.model,
                device=src.device, options=src.options, tensor_type_list=src.tensor_type_list,
                target_model=pb.Model(model_id=f"t{job_id}", name=src.name,
                                      model_type=pb.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY),
                failure_reason="Failed to compile: op Foo unsupported" if failed else ""))
        return pb.Job(inference_job=pb.InferenceJob(
            inference_job_id=job_id, job_state=state, name=src.name, model=src.model,
            device=src.device, options=src.options, is_profiling_on=src.is_profiling_on))

    def get_job_results(self, job_id):
        detail = pb.ProfileDetail(
            major_version=1, execution_time=2345, after_execution_peak_memory=7_000_000,
            cold_load_time=90_000,
            layer_details=[pb.LayerDetail(name="conv", layer_type_name="Conv",
                                          compute_unit=pb.ComputeUnit.Value("COMPUTE_UNIT_NPU")),
                           pb.LayerDetail(name="out", layer_type_name="Add",
                                          compute_unit=pb.ComputeUnit.Value("COMPUTE_UNIT_NPU"))])
        return pb.JobResult(inference_job_result=pb.InferenceJobResult(inference_job_id=job_id,
                                                                       detail=detail))

    def get_model(self, model_id):
        return pb.Model(model_id=model_id, model_type=pb.ModelType.MODEL_TYPE_ONNX)


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("QAI_HUB_API_TOKEN", "test-token")
    monkeypatch.delenv("NASFRAME_QAI_HUB_FAKE", raising=False)


def _export(tmp_path: Path, external: bool, monkeypatch):
    """A small convolution exported by nasframe (weights external when ``external``)."""
    import nasframe.deploy as deploy

    if external:       # the threshold scaled down: the export writes <model>.onnx.data
        monkeypatch.setattr(deploy, "EXTERNAL_DATA_BYTES", 1024)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 3, 3, padding=1))
    return deploy.export_module(net, (torch.rand(1, 3, 16, 16),), "onnx", tmp_path / "m" / "model.onnx",
                                input_names=["x"], threads=1)


def _backend(tmp_path, **options) -> QaiHubBackend:
    return QaiHubBackend({"device": DEVICES[0], "poll_every": 0.01, "backoff": 0.01,
                          "cache_dir": str(tmp_path / "hub-cache"), **options})


def _run(backend, exported, ctx, service):
    """Submit, then poll until a value; the API calls each poll made."""
    ref = backend.submit(backend.request(exported, ctx), ctx)
    per_poll = []
    for _ in range(50):
        before = len(service.calls)
        value = backend.poll(ref, ctx)
        per_poll.append(service.calls[before:])
        if value is not None:
            return value, ref, per_poll
    raise AssertionError("no value after 50 polls")


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_compile_and_profile_through_the_real_client(tmp_path, monkeypatch, token, capsys, external):
    service = FakeService().install(monkeypatch)
    exported = _export(tmp_path, external, monkeypatch)
    assert Path(exported.path + ".data").is_file() == external
    ctx = plugin_context(tmp_path)
    backend = _backend(tmp_path)
    assert service.calls == ["get_device_list"]          # the device checked at build time
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        value, ref, per_poll = _run(backend, exported, ctx, service)
    # what was uploaded: the .onnx alone, or a directory of exactly the .onnx and its .data
    (upload,) = service.uploads
    assert upload["type"] == "MODEL_TYPE_ONNX"
    assert upload["is_directory"] == external
    if external:
        assert upload["files"] == ["model.onnx", "model.onnx.data"]
    # the profile ran as an inference job with profiling on (not the deprecated call)
    kinds = {j["kind"]: j["pb"] for j in service.jobs.values()}
    assert set(kinds) == {"compile", "inference"} and kinds["inference"].is_profiling_on
    assert "--target_runtime qnn_context_binary" in kinds["compile"].options
    assert "deprecated" not in capsys.readouterr().out.lower()
    # one API call per poll while a job runs; a poll that submits or finishes adds that call
    waiting = [c for c in per_poll if not any(n.startswith(("create", "get_job_results")) for n in c)]
    assert waiting and all(c == ["get_job"] for c in waiting), per_poll
    assert all(len(c) <= 3 for c in per_poll), per_poll
    # the real client's profile parsing: 2345 us -> 2.345 ms, the layers per compute unit
    assert value.value == pytest.approx(2.345)
    assert value.details["compute_units"] == {"NPU": 2}
    assert value.details["peak_memory_bytes"] == 7_000_000
    assert value.details["profile_job"] == ref["profile_job"]


def test_a_failed_compile_fails_with_the_hubs_reason(tmp_path, monkeypatch, token):
    service = FakeService(fail_compile="nasframe-model").install(monkeypatch)
    exported = _export(tmp_path, False, monkeypatch)
    ctx = plugin_context(tmp_path)
    backend = _backend(tmp_path)
    with pytest.raises(DeviceJobError, match="op Foo unsupported"):
        _run(backend, exported, ctx, service)


def test_the_device_is_checked_at_build_time_cached_and_offline_only_warned(tmp_path, monkeypatch, token):
    service = FakeService().install(monkeypatch)
    with pytest.raises(ParamError, match="did you mean 'Samsung Galaxy S25 \\(Family\\)'"):
        _backend(tmp_path, device="Samsung Galaxy S25 Family")
    _backend(tmp_path)
    assert service.calls.count("get_device_list") == 1      # the second build read the cache
    offline = FakeService(offline=True).install(monkeypatch)
    with pytest.warns(UserWarning, match="could not check device"):
        _backend(tmp_path / "elsewhere")
    assert offline.calls == ["get_device_list"]
    _backend(tmp_path / "unchecked", check_device=False)
    assert offline.calls == ["get_device_list"]
