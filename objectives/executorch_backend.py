"""The ``executorch`` latency backend: the candidate lowered to ExecuTorch's XNNPACK backend
(a ``.pte`` program, what runs PyTorch models on Android CPUs) and timed with ExecuTorch's
own runtime on this CPU.

The ``latency`` objective exports the candidate with ``torch.export`` (format
``exported_program``: the space's export form, checked against PyTorch, cached in the run
directory by architecture and input shape). :class:`ExecuTorchBackend` lowers that program
with ``to_edge_transform_and_lower`` and the XNNPACK partitioner to an ExecuTorch program,
saves it beside the export (``<export>.xnnpack.pte``, keyed by the export's graph hash, so a
resumed run does not lower again), loads it in ExecuTorch's runtime (``executorch.runtime``),
checks its output against PyTorch's on the same inputs, and times ``warmup`` untimed and
``repeats`` timed runs with ``threads`` threads in ExecuTorch's threadpool. The value is the
median in milliseconds.

Provenance: the ExecuTorch version, the threads, the program's size, its check against
PyTorch (``pte_max_rel_error``) and how much of the graph XNNPACK took
(``delegated_nodes`` / ``non_delegated_nodes`` and the non-delegated op types: those run on
ExecuTorch's portable CPU kernels).

Install: ``pip install 'nasframe[executorch]'`` (``executorch`` 1.5.1 installs beside torch
2.13 without changing it).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nasframe.backends import LatencyBackend
from nasframe.params import Field, Int
from nasframe_objectives.latency import TimingParams, cpu_name, summarise
from nasframe_objectives.ort_backend import _cores

#: suffix of the lowered program beside the exported one
PTE_SUFFIX = ".xnnpack.pte"


def lower_to_pte(program_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Lower a saved ``torch.export`` program (``.pt2``) to an ExecuTorch program with the
    XNNPACK partitioner; writes ``out`` and ``<out>.json`` (delegation summary, seconds).
    Returns the summary."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    start = time.perf_counter()
    program = torch.export.load(str(program_path))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    frame = info.get_operator_delegation_dataframe()
    rest = {str(r.op_type): int(r.occurrences_in_non_delegated_graphs)
            for r in frame.itertuples()
            if r.op_type not in ("Total", "getitem") and r.occurrences_in_non_delegated_graphs}
    buffer = edge.to_executorch().buffer
    out = Path(out)
    out.write_bytes(buffer)
    summary = {"delegated_nodes": int(info.num_delegated_nodes),
               "non_delegated_nodes": int(info.num_non_delegated_nodes),
               "delegated_subgraphs": int(info.num_delegated_subgraphs),
               "non_delegated_ops": dict(sorted(rest.items())),
               "pte_bytes": len(buffer), "lower_s": time.perf_counter() - start}
    Path(str(out) + ".json").write_text(json.dumps(summary, indent=1))
    return summary


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's CPU threadpool (the one XNNPACK runs on); returns the size."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def load_method(pte: str | Path):
    """The ``forward`` method of an ExecuTorch program, loaded in ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(pte)).load_method("forward")


class ExecuTorchBackend(LatencyBackend):
    """The candidate as an ExecuTorch program on its XNNPACK backend, timed with ExecuTorch's
    runtime on this CPU (see the module docstring)."""

    name = "executorch"
    export_format = "exported_program"
    dependencies = ("executorch",)
    install_hint = "pip install 'nasframe[executorch]'"

    class Params(TimingParams):
        threads: Int | None = Field(None, ge=1, le=1024)
        """Threads of ExecuTorch's threadpool (default: the cores this process may use)."""

    def _threads(self) -> int:
        return self.params.threads if self.params.threads is not None else _cores()

    def device(self) -> str:
        return f"cpu ({cpu_name()}, {self._threads()} threads)"

    def runtime(self) -> str:
        from importlib.metadata import version

        return f"executorch {version('executorch')} (XNNPACK)"

    def measure(self, model, inputs, ctx, exported=None):
        import numpy as np
        import torch

        from nasframe.deploy import _flat_tensors

        if exported is None or exported.format != "exported_program":
            raise ValueError("the executorch backend lowers a torch.export program; none was given")
        p = self.params
        pte = Path(exported.path + PTE_SUFFIX)
        meta = Path(str(pte) + ".json")
        key = exported.graph_hash
        summary = json.loads(meta.read_text()) if pte.exists() and meta.exists() else None
        if summary is None or summary.get("graph_hash") != key:
            summary = {**lower_to_pte(exported.path, pte), "graph_hash": key}
            meta.write_text(json.dumps(summary, indent=1))
        threads = set_threads(self._threads())
        method = load_method(pte)
        args = [t.detach().cpu().contiguous() for t in _flat_tensors(inputs)]
        with torch.no_grad():
            reference = [t.detach().cpu().numpy() for t in _flat_tensors(model.eval()(*inputs))]
        got = [np.asarray(t) for t in method.execute(args)]
        scale = max(float(np.abs(r).max()) for r in reference) or 1.0
        rel = max(float(np.abs(np.asarray(g).reshape(r.shape) - r).max())
                  for r, g in zip(reference, got)) / scale
        times: list[float] = []
        for i in range(p.warmup + p.repeats):
            start = time.perf_counter()
            method.execute(args)
            if i >= p.warmup:
                times.append((time.perf_counter() - start) * 1e3)
        return summarise(times, threads=threads, warmup=p.warmup, export_format="pte",
                         pte_max_rel_error=rel, **{k: v for k, v in summary.items()
                                                    if k != "graph_hash"})
