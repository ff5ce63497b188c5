"""The ``qai_hub`` latency backend: a candidate compiled and profiled on a phone in
Qualcomm AI Hub's device farm.

Each candidate's ONNX export is compiled for ``device`` and ``runtime`` (a QNN
context binary, TFLite or ONNX Runtime model), then profiled there; the value is
the profile's ``execution_summary.estimated_inference_time`` (microseconds,
stored in milliseconds). Device jobs are slow and paid, so the backend is
asynchronous (:mod:`nasframe.backends`): the runner submits every job of a batch
at once and polls them together; the compile job's id is stored with its trial
the moment it is submitted, the profile job's as soon as the compile finished
and it was submitted, so a run killed with SIGKILL and resumed re-attaches to
them (``get_job``) instead of paying again.

A model whose weights are external (``<model>.onnx.data``, past the export's size
threshold) is uploaded as a directory holding the ``.onnx`` and its ``.data``, the
form AI Hub takes. The profile job is an inference job with ``profile=True``
(``submit_profile_job`` is deprecated in qai-hub 0.56). The device name is checked
against AI Hub's device list when the backend is built (cached a day; offline, a
warning). A poll is one API call per job: the client's job objects are kept.

Results are cached across runs in a user cache directory (``cache_dir``;
default ``$NASFRAME_CACHE_DIR/qai_hub``, else ``~/.cache/nasframe/qai_hub``),
one JSON file per (graph hash, device, runtime, options); a job in flight is
kept there too, so a second trial or run with the same graph attaches to it. A
failed compile or profile fails its trial with the hub's message and the job's
URL (and is not cached); transient errors (the service down, rate limits,
dropped connections) are retried with exponential backoff.

The API token comes from ``qai-hub configure --api_token TOKEN`` (the file
``~/.qai_hub/client.ini``, or the named ``profile``), or from the environment
variable named by ``token_env``; without one, building the backend (e.g.
``nasframe validate``) fails at once. Tests set ``NASFRAME_QAI_HUB_FAKE=DIR`` to
use :mod:`nasframe_objectives.qai_hub_fake` in place of the ``qai_hub`` module.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nasframe import Value
from nasframe.backends import DeviceJobError, LatencyBackend
from nasframe.params import Field, Float, Int, ParamError, Params

if TYPE_CHECKING:
    from nasframe import Context
    from nasframe.deploy import ExportResult

#: the environment variable that selects the fake client (tests only)
FAKE_ENV = "NASFRAME_QAI_HUB_FAKE"
RUNTIMES = ("qnn_context_binary", "tflite", "onnx")


def hub_module() -> Any:
    """The ``qai_hub`` module, or the fake when :data:`FAKE_ENV` is set."""
    if os.environ.get(FAKE_ENV):
        from nasframe_objectives import qai_hub_fake

        return qai_hub_fake
    import qai_hub

    return qai_hub


def _transient_errors(hub: Any) -> tuple[type[BaseException], ...]:
    """The errors worth retrying: the service's internal errors and rate limits, and
    dropped connections."""
    kinds: list[type[BaseException]] = [hub.InternalError, ConnectionError, TimeoutError]
    rate = getattr(hub, "RateLimitedError", None)
    if rate is None:
        try:
            from qai_hub.client import RateLimitedError as rate
        except ImportError:
            rate = None
    if rate is not None:
        kinds.append(rate)
    try:
        import requests

        kinds += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(kinds)


def default_cache_dir() -> Path:
    root = os.environ.get("NASFRAME_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "qai_hub"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "nasframe" / "qai_hub"


class JobCache:
    """One JSON file per cache key: a finished result (``value_ms``), or the ids of the
    jobs still in flight for it. Written atomically; shared by runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def write(self, key: str, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def drop(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class QaiHubBackend(LatencyBackend):
    """A phone in Qualcomm AI Hub's device farm: compile for ``device`` and ``runtime``,
    then profile; the value is the profile's estimated inference time. Asynchronous
    (jobs in flight while the search goes on), resumable and cached across runs."""

    name = "qai_hub"
    asynchronous = True
    export_format = "onnx"
    dependencies = ("qai_hub",)
    install_hint = "pip install 'nasframe[hub]'"

    class Params(Params):
        device: str = Field("Samsung Galaxy S25 (Family)", min_length=1, max_length=200)
        """The device's name in AI Hub (`qai-hub list-devices`)."""
        runtime: Literal["qnn_context_binary", "tflite", "onnx"] = "qnn_context_binary"
        """Target runtime of the compile job (--target_runtime)."""
        compile_options: str = Field("", max_length=2000)
        """Extra options of the compile job (e.g. --quantize_full_type int8)."""
        profile_options: str = Field("", max_length=2000)
        """Options of the profile job (e.g. --compute_unit npu)."""
        profile: str | None = Field(None, pattern=r"^[\w.-]+$")
        """qai-hub config profile (~/.qai_hub/PROFILE.ini; default: client.ini)."""
        token_env: str = Field("QAI_HUB_API_TOKEN", pattern=r"^\w+$")
        """Environment variable holding an API token (used when set)."""
        cache_dir: str | None = None
        """Results cache shared by runs (default: ~/.cache/nasframe/qai_hub)."""
        poll_every: Float = Field(10.0, gt=0, le=3600)
        """Seconds between two polls of the jobs in flight."""
        retries: Int = Field(5, ge=0, le=100)
        """Tries again after a transient error (service down, rate limit)."""
        backoff: Float = Field(2.0, ge=0, le=600)
        """Seconds before the first retry; doubled each time (at most 300 s)."""
        check_device: bool = True
        """Check `device` against AI Hub's device list when the backend is built (the list
        is cached for a day in cache_dir; offline, a warning instead)."""

    @classmethod
    def missing_dependencies(cls, deep: bool = False) -> list[str]:
        return [] if os.environ.get(FAKE_ENV) else super().missing_dependencies(deep)

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.poll_every = self.params.poll_every
        self.cache = JobCache(self.params.cache_dir or default_cache_dir())
        self._client_obj = None
        self._jobs: dict[str, Any] = {}      # job id -> the client's Job (one API call a poll)
        self._check_token()
        if self.params.check_device:
            self._check_device()

    # -- the client ------------------------------------------------------
    def _client(self) -> Any:
        if self._client_obj is None:
            hub, p = hub_module(), self.params
            token = os.environ.get(p.token_env)
            if token:
                self._client_obj = hub.Client(config=hub.ClientConfig(api_token=token))
            else:
                self._client_obj = hub.Client(profile=p.profile) if p.profile else hub.Client()
        return self._client_obj

    def _check_token(self) -> None:
        """Fail now (exit 2 at `nasframe validate`) when no token is configured; reads the
        config file only, no network."""
        hub = hub_module()
        try:
            _ = self._client().config
        except (hub.UserError, FileNotFoundError, KeyError) as err:
            import re

            text = str(err)
            found = re.search(r"(\S+\.ini) not found", text)
            why = f"{found.group(1)} not found" if found else \
                (text.strip().splitlines() or [type(err).__name__])[0][:200]
            raise ParamError("profile" if self.params.profile else "token",
                             f"no Qualcomm AI Hub API token is configured ({why}); "
                             f"run `qai-hub configure --api_token YOUR_TOKEN` once (the token is "
                             f"on your AI Hub account page), or set {self.params.token_env}"
                             ) from None

    #: how long the cached device list is trusted
    DEVICE_LIST_TTL = 24 * 3600.0
    #: how long validate waits for the device list before it warns and goes on
    DEVICE_CHECK_SECONDS = 8.0

    def device_names(self) -> list[str]:
        """The names of AI Hub's devices (``Client.get_devices()``), cached in ``cache_dir``
        for :attr:`DEVICE_LIST_TTL` seconds."""
        path = self.cache.root / "devices.json"
        try:
            doc = json.loads(path.read_text())
            if time.time() - float(doc["time"]) < self.DEVICE_LIST_TTL:
                return list(doc["names"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        devices = self._client().get_devices()
        names = sorted({d.name for d in devices})
        self.cache.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"time": time.time(), "names": names}))
        os.replace(tmp, path)
        return names

    def _check_device(self) -> None:
        """A device AI Hub does not have fails now (exit 2 at `nasframe validate`), not each
        trial after its export; offline (the service unreachable) it only warns."""
        import difflib

        import threading

        hub = hub_module()
        box: dict[str, Any] = {}

        def fetch() -> None:
            try:
                box["names"] = self.device_names()
            except BaseException as err:   # noqa: BLE001 - handed to the caller below
                box["error"] = err
        # qai-hub's own session retries an unreachable service for about 30 s: wait less
        worker = threading.Thread(target=fetch, daemon=True, name="qai_hub-devices")
        worker.start()
        worker.join(self.DEVICE_CHECK_SECONDS)
        err = box.get("error")
        if "names" not in box:
            why = (f"{type(err).__name__}: {' '.join(str(err).split())[:160]}" if err is not None
                   else f"no answer in {self.DEVICE_CHECK_SECONDS:.0f} s")
            if err is not None and not isinstance(err, (*_transient_errors(hub), OSError, hub.Error)):
                raise err
            warnings.warn(f"qai_hub: could not check device {self.params.device!r} against AI "
                          f"Hub's device list ({why}); checked when the jobs run",
                          UserWarning, stacklevel=3)
            return
        names = box["names"]
        if self.params.device not in names:
            close = difflib.get_close_matches(self.params.device, names, n=3, cutoff=0.4)
            raise ParamError("device", f"{self.params.device!r} is not a Qualcomm AI Hub device"
                             + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
                                else f"; {len(names)} devices, e.g. {', '.join(names[:3])}")
                             + " (`qai-hub list-devices` lists them)")

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, retried with exponential backoff on transient errors."""
        transient = _transient_errors(hub_module())
        wait = self.params.backoff
        for attempt in range(self.params.retries + 1):
            try:
                return fn(*args, **kwargs)
            except transient as err:
                if attempt == self.params.retries:
                    raise DeviceJobError(f"qai_hub {what}: {type(err).__name__} after "
                                         f"{attempt + 1} tries: {' '.join(str(err).split())}"
                                         ) from err
                time.sleep(wait)
                wait = min(max(wait * 2, 0.01), 300.0)
        raise AssertionError("unreachable")

    # -- the LatencyBackend interface -------------------------------------
    def device(self) -> str:
        return f"{self.params.device} (Qualcomm AI Hub)"

    def runtime(self) -> str:
        return self.params.runtime

    def request(self, exported: ExportResult, ctx: Context) -> dict[str, Any]:
        p = self.params
        return {"model": exported.path, "graph_hash": exported.graph_hash,
                "input_specs": {n: [list(s), d] for n, (s, d) in exported.input_specs().items()},
                "device": p.device, "runtime": p.runtime,
                "compile_options": p.compile_options, "profile_options": p.profile_options}

    @staticmethod
    def cache_key(request: dict[str, Any]) -> str:
        """(graph hash, device, runtime, options): what makes two jobs the same."""
        from nasframe.context import content_hash

        return content_hash({k: request[k] for k in ("graph_hash", "device", "runtime",
                                                     "compile_options", "profile_options")})

    def submit(self, request: dict[str, Any], ctx: Context) -> dict[str, Any]:
        key = self.cache_key(request)
        entry = self.cache.read(key) or {}
        if "value_ms" in entry:
            return {"id": entry["profile_job"], "key": key, "cached": True}
        if "compile_job" in entry:      # in flight for another trial or run: attach to it
            return {"id": entry["compile_job"], "key": key, "attached": True,
                    **{k: entry[k] for k in ("compile_job", "compile_url", "profile_job",
                                             "profile_url") if k in entry}}
        hub, client = hub_module(), self._client()
        compile_options = f"--target_runtime {request['runtime']} {request['compile_options']}"
        job = self._call("submit_compile_job", client.submit_compile_job,
                         upload_path(request["model"]), device=hub.Device(request["device"]),
                         name=f"nasframe-{Path(request['model']).stem}",
                         input_specs={n: (tuple(s), d) for n, (s, d)
                                      in request["input_specs"].items()},
                         options=compile_options.strip())
        self._jobs[job.job_id] = job
        ref = {"id": job.job_id, "key": key, "compile_job": job.job_id, "compile_url": job.url}
        self.cache.write(key, {**_meta(request), "compile_job": job.job_id,
                               "compile_url": job.url, "submitted": time.time()})
        return ref

    def poll(self, job: dict[str, Any], ctx: Context) -> Value | None:
        key = job["key"]
        entry = self.cache.read(key) or {}
        if "value_ms" in entry:
            return self._value(entry, cached=job.get("cached", False)
                               or entry.get("profile_job") != job.get("profile_job"))
        for k in ("profile_job", "profile_url"):   # submitted by another trial or run
            if k not in job and k in entry and entry.get("compile_job") == job.get("compile_job"):
                job[k] = entry[k]
        client = self._client()
        if "profile_job" not in job:
            compiled = self._get_job(client, job["compile_job"], key)
            status = self._call("get_status", compiled.get_status)
            if not status.finished:
                return None
            if not status.success:
                self.cache.drop(key)
                raise DeviceJobError(f"compile job {compiled.job_id} for {self.params.device} "
                                     f"({self.params.runtime}) failed: {status.message}",
                                     compiled.url)
            target = self._call("get_target_model", compiled.get_target_model)
            hub = hub_module()
            # submit_profile_job is deprecated in qai-hub 0.56: an inference job with profile=True
            profiled = self._call("submit_inference_job", client.submit_inference_job, target,
                                  device=hub.Device(self.params.device),
                                  name=compiled.name or None,
                                  options=self.params.profile_options, profile=True)
            self._jobs[profiled.job_id] = profiled
            self._jobs.pop(compiled.job_id, None)
            job["profile_job"], job["profile_url"] = profiled.job_id, profiled.url
            self.cache.write(key, {**entry, "compile_job": job["compile_job"],
                                   "compile_url": job.get("compile_url", compiled.url),
                                   "profile_job": profiled.job_id, "profile_url": profiled.url})
            return None
        profiled = self._get_job(client, job["profile_job"], key)
        status = self._call("get_status", profiled.get_status)
        if not status.finished:
            return None
        if not status.success:
            self.cache.drop(key)
            raise DeviceJobError(f"profile job {profiled.job_id} on {self.params.device} "
                                 f"failed: {status.message}", profiled.url)
        profile = self._call("download_profile", profiled.download_profile)
        summary = profile.get("execution_summary", {})
        if "estimated_inference_time" not in summary:
            raise DeviceJobError(f"profile job {profiled.job_id} returned no "
                                 "estimated_inference_time", profiled.url)
        self._jobs.pop(profiled.job_id, None)
        units: dict[str, int] = {}
        for layer in profile.get("execution_detail", []):
            unit = layer.get("compute_unit", "?")
            units[unit] = units.get(unit, 0) + 1
        done = {**entry, "compile_job": job["compile_job"],
                "compile_url": job.get("compile_url", entry.get("compile_url")),
                "profile_job": profiled.job_id, "profile_url": profiled.url,
                "value_ms": summary["estimated_inference_time"] / 1000.0,
                "peak_memory_bytes": summary.get("estimated_inference_peak_memory"),
                "first_load_ms": (summary["first_load_time"] / 1000.0
                                  if isinstance(summary.get("first_load_time"), (int, float))
                                  else None),
                "compute_units": units, "finished": time.time()}
        self.cache.write(key, done)
        return self._value(done, cached=False)

    def _get_job(self, client: Any, job_id: str, key: str) -> Any:
        """The job's client object: kept from its submission (or the first poll after a
        resume), so that a poll is one API call (its status)."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        try:
            job = self._jobs[job_id] = self._call("get_job", client.get_job, job_id)
            return job
        except hub_module().UserError as err:     # gone (expired, another account)
            self.cache.drop(key)
            raise DeviceJobError(f"job {job_id}: {' '.join(str(err).split())}") from err

    def _value(self, entry: dict[str, Any], cached: bool) -> Value:
        return Value(entry["value_ms"], {
            "device": self.params.device, "target_runtime": self.params.runtime,
            "compile_job": entry.get("compile_job"), "compile_url": entry.get("compile_url"),
            "profile_job": entry.get("profile_job"), "profile_url": entry.get("profile_url"),
            "peak_memory_bytes": entry.get("peak_memory_bytes"),
            "first_load_ms": entry.get("first_load_ms"),
            "compute_units": entry.get("compute_units", {}), "cached": cached,
            "qai_hub": getattr(hub_module(), "__version__", "?")})


def upload_path(model: str | Path) -> str:
    """What to upload for the ONNX file ``model``: the file itself, or -- when its weights are
    external (``<model>.data``, written past the export's size threshold) -- a directory
    holding exactly the ``.onnx`` and its ``.data`` (``<model>.hub/``, hard links where the
    file system allows), the form AI Hub takes for external data."""
    model = Path(model)
    data = Path(str(model) + ".data")
    if model.suffix != ".onnx" or not data.is_file():
        return str(model)
    folder = model.with_name(model.name + ".hub")
    folder.mkdir(exist_ok=True)
    for src in (model, data):
        dst = folder / src.name
        if dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns \
                and dst.stat().st_size == src.stat().st_size:
            continue
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return str(folder)


def _meta(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request[k] for k in ("graph_hash", "device", "runtime", "compile_options",
                                    "profile_options", "input_specs")}
