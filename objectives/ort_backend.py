"""The ``onnxruntime`` latency backend: the candidate's exported ONNX graph timed on this CPU.

The ``latency`` objective exports the candidate (checked against PyTorch, cached
in the run directory) and hands the file to :class:`OnnxRuntimeBackend`, which
opens an ONNX Runtime session on the CPU execution provider (graph optimisation
level, intra-op threads, spin-waiting as set), runs ``warmup`` untimed passes
and ``repeats`` timed ones, and reports their median with p10/p90. Provenance:
the ORT version, the providers the session runs on, the session settings and
the export format.

Spin-waiting is off by default: on a machine shared with other jobs ORT's
spinning worker threads lose more than they gain (and they skew the other
jobs' timings); turn it on (``spinning: true``) on an idle device.
"""
from __future__ import annotations

import os
from typing import Literal

from nasframe.backends import LatencyBackend, time_passes
from nasframe.params import Bool, Field, Int, Params
from nasframe_objectives.latency import TimingParams, cpu_name, summarise


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


class OnnxRuntimeBackend(LatencyBackend):
    """The exported ONNX graph in ONNX Runtime on this CPU (CPUExecutionProvider)."""

    name = "onnxruntime"
    export_format = "onnx"
    dependencies = ("onnxruntime", "onnx", "onnxscript")
    install_hint = "pip install 'nasframe[onnx]'"

    class Params(TimingParams):
        threads: Int | None = Field(None, ge=1, le=1024)
        """Intra-op threads of the session (default: the cores this process may use)."""
        optimize: Literal["disable", "basic", "extended", "all"] = "all"
        """ONNX Runtime's graph optimisation level."""
        spinning: Bool = False
        """Let idle worker threads spin-wait (faster on an idle machine, worse on a shared one)."""

    def _threads(self) -> int:
        return self.params.threads if self.params.threads is not None else _cores()

    def device(self) -> str:
        return f"cpu ({cpu_name()}, {self._threads()} threads)"

    def runtime(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"

    paired = True

    def _session(self, inputs, exported):
        from nasframe.deploy import _flat_tensors, ort_session

        if exported is None or exported.format != "onnx":
            raise ValueError("the onnxruntime backend times an exported ONNX graph; none was given")
        p = self.params
        session = ort_session(exported.path, self._threads(), p.optimize, p.spinning)
        names = [i.name for i in session.get_inputs()]
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, _flat_tensors(inputs))}
        return session, feed

    def _settings(self, session) -> dict:
        import onnxruntime as ort

        p = self.params
        return {"threads": self._threads(), "onnxruntime": ort.__version__,
                "providers": session.get_providers(), "graph_optimization": p.optimize,
                "spinning": p.spinning, "export_format": "onnx"}

    def runner(self, model, inputs, ctx, exported=None):
        session, feed = self._session(inputs, exported)
        return (lambda: session.run(None, feed)), self._settings(session)

    def measure(self, model, inputs, ctx, exported=None):
        p = self.params
        run, settings = self.runner(model, inputs, ctx, exported)
        return summarise(time_passes(run, p.warmup, p.repeats), warmup=p.warmup, **settings)
