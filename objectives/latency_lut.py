"""``latency_lut``: a candidate's latency predicted from a lookup table of its blocks.

Timing every candidate on a phone costs a device job each; a search over 10^4
candidates needs tens of jobs instead when each distinct block/layer *variant* of
the space is timed once (on the input shape it sees inside the network) and a
candidate is predicted as the sum of its blocks plus a fixed part. The space
says what its variants are (:class:`~nasframe.capabilities.BlockLatencyParts`);
the timing is done by any latency backend (``torch``, ``onnxruntime``,
``qai_hub``, ...; ``backend`` and ``options`` as for ``latency``), device jobs
all in flight together.

The fixed part (the stem, skips, resampling: what the blocks leave out) is
measured: the median, over ``calibration`` sampled architectures timed whole, of
the whole minus the sum of its blocks. ``check`` more sampled architectures are
timed whole to report the prediction error (mean and max relative error, Kendall
tau), in ``RUN_DIR/latency_lut.json`` with the table. On a backend that times in
this process the variants and the whole architectures are timed interleaved, in
rounds (:func:`measure_modules`), so that the differences are taken at one pace.
The value is a prediction, so its provenance kind is ``proxy`` (``nasframe
analyse`` checks it against a measured latency).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasframe import Objective, Value
from nasframe.capabilities import BlockLatencyParts
from nasframe.params import Field, Int, ParamError, Params, Shape, parse_params

if TYPE_CHECKING:
    from nasframe import Candidate, Context
    from nasframe.backends import LatencyBackend


def make_backend(name: str, options: dict[str, Any]) -> LatencyBackend:
    """The latency backend ``name`` with ``options`` (errors name ``backend`` / ``options.X``)."""
    from nasframe.errors import ConfigError
    from nasframe.plugins import get_plugins

    try:
        cls = get_plugins().latency_backends.get(name)
    except ConfigError as err:
        raise ParamError("backend", str(err)) from None
    parsed = parse_params(cls.Params, options, "options")
    try:
        return cls(parsed)
    except ParamError as err:
        raise ParamError(f"options.{err.field}", err.message) from None


def measure_modules(backend: LatencyBackend, items: list[tuple[str, Any, tuple[Any, ...]]],
                    ctx: Context, export_dir: Path, what: str = "timing",
                    seed: int = 0) -> dict[str, Value]:
    """Time each ``(key, module, inputs)`` on ``backend``. A backend that times in this
    process and can hold a model ready (``paired``: torch, onnxruntime) times them all
    interleaved, one pass of each per round in a new random order
    (:func:`nasframe.backends.interleaved_times`), so that the table's blocks and the whole
    networks its fixed part is measured on share the machine's pace; another synchronous
    backend times them one after the other; an asynchronous one gets every job submitted
    first, then polled together. Exported graphs go to ``export_dir``."""
    from nasframe.backends import DeviceJobError, interleaved_times
    from nasframe.deploy import SUFFIX, ExportResult, export_module

    from nasframe_objectives.latency import summarise

    def export(key: str, module: Any, inputs: tuple[Any, ...]) -> ExportResult | None:
        fmt = backend.export_format
        if fmt is None:
            return None
        path = export_dir / f"{key.replace(':', '_')}{SUFFIX[fmt]}"
        if path.exists() and Path(str(path) + ".json").exists():
            return ExportResult.read(path)
        return export_module(module.eval(), inputs, fmt, path)

    out: dict[str, Value] = {}
    with ctx.progress() as bar:
        if _timing(backend) == "interleaved":
            task = bar.add_task(f"{what}: exporting for {backend.name}", total=len(items), info="")
            runners, settings = [], []
            for key, module, inputs in items:
                run, setting = backend.runner(module.eval(), inputs, ctx,
                                              export(key, module, inputs))
                runners.append(run)
                settings.append(setting)
                bar.advance(task)
            p = backend.params
            rounds = bar.add_task(f"{what}: timing interleaved on {backend.name}",
                                  total=p.repeats, info="rounds")
            times = interleaved_times(runners, p.warmup, p.repeats, seed,
                                      on_round=lambda: bar.advance(rounds))
            for (key, _, _), t, setting in zip(items, times, settings):
                out[key] = summarise(t, warmup=p.warmup, interleaved=len(items), **setting)
            return out
        task = bar.add_task(f"{what} on {backend.name}", total=len(items), info="")
        if not backend.asynchronous:
            for key, module, inputs in items:
                out[key] = backend.measure(module.eval(), inputs, ctx, export(key, module, inputs))
                bar.advance(task)
            return out
        jobs = {}
        for key, module, inputs in items:
            jobs[key] = backend.submit(backend.request(export(key, module, inputs), ctx), ctx)
        while len(out) < len(jobs):
            for key, job in jobs.items():
                if key in out:
                    continue
                try:
                    value = backend.poll(job, ctx)
                except DeviceJobError as err:
                    raise DeviceJobError(f"latency_lut: {key}: {err}") from None
                if value is not None:
                    out[key] = value
                    bar.advance(task)
            if len(out) < len(jobs):
                time.sleep(backend.poll_every)
    return out


class LatencyLUT(Objective):
    """Latency predicted from a lookup table of the space's block variants, each timed
    once on a latency backend, plus a measured fixed part (see the module docstring).
    Details: the blocks summed, the fixed part, the table's size and its prediction
    error on sampled architectures timed whole."""

    name = "latency_lut"
    direction = "min"
    kind = "proxy"
    unit = "ms"
    cost = 0.5
    requires = (BlockLatencyParts,)
    small_params = {"options": {"repeats": 3, "warmup": 1}, "calibration": 1, "check": 2}

    class Params(Params):
        backend: str = Field("torch", min_length=1, max_length=64)
        """Where the variants are timed: torch, or a registered backend (qai_hub, ...)."""
        options: dict[str, Any] = {}
        """The backend's params (see `nasframe plugins BACKEND`)."""
        input_shape: Shape | None = None
        """Full model input shape, batch included (default: the space's, with batch_size)."""
        batch_size: Int = Field(1, ge=1, le=65_536)
        """Batch of the default input (ignored with input_shape)."""
        calibration: Int = Field(2, ge=1, le=1000)
        """Sampled architectures timed whole to measure the fixed part."""
        check: Int = Field(4, ge=0, le=10_000)
        """Sampled architectures timed whole to report the prediction error."""
        seed: Int | None = None
        """Seed of the sampled architectures and random inputs (default: the experiment's)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.timer = make_backend(self.params.backend, self.params.options)
        self.backend = f"latency_lut/{self.timer.name}"
        self.table: dict[str, float] | None = None
        self.fixed_ms = 0.0
        self.report: dict[str, Any] = {}

    def device(self, ctx: Context) -> str:
        return self.timer.device()

    def _shape(self, space) -> tuple[int, ...]:
        if self.params.input_shape is not None:
            return tuple(self.params.input_shape)
        return (self.params.batch_size, *space.input_shape)

    def prepare(self, space, ctx: Context) -> None:
        from nasframe.context import content_hash

        shape = self._shape(space)
        payload = {"space": space.name, "space_params": _params_of(space), "shape": shape,
                   "backend": self.timer.name, "options": self.timer.params.model_dump(),
                   "calibration": self.params.calibration, "check": self.params.check,
                   "seed": ctx.seed_for(self.params.seed),
                   # what made and ran the graphs: a new runtime or a new release of the
                   # space's code (e.g. a faster export form) times anew
                   "runtime": self.timer.runtime(), "code": _code_versions(space),
                   "timing": _timing(self.timer)}
        path = ctx.cache.path("latency_lut", payload, ".json")
        if path.exists():
            doc = json.loads(path.read_text())
        else:
            doc = self._build(space, ctx, shape, path.parent / f"{content_hash(payload)}-exports")
            doc["key"] = payload
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1, default=str))
            tmp.replace(path)
        self.table, self.fixed_ms, self.report = doc["table"], doc["fixed_ms"], doc["report"]
        try:
            (Path(ctx.run_dir) / "latency_lut.json").write_text(json.dumps(doc, indent=1,
                                                                           default=str))
        except OSError:
            pass

    def _build(self, space, ctx: Context, shape, export_dir: Path) -> dict[str, Any]:
        import numpy as np
        import torch
        from scipy.stats import kendalltau

        seed = ctx.seed_for(self.params.seed)
        gen = torch.Generator().manual_seed(seed)

        def inputs(shapes):
            return tuple(torch.rand(s, generator=gen) for s in shapes)

        def seeded(make):
            """``make()`` with the weights drawn from the seed (the same graph, hence the
            same device-job cache entry, in every run)."""
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return make()

        variants = space.latency_variants(shape)
        rng = np.random.default_rng(seed)
        archs, seen = [], set()
        want = self.params.calibration + self.params.check
        for _ in range(50 * want):
            if len(archs) == want:
                break
            arch = space.sample(rng)
            if arch.id not in seen and space.validate(arch) is None:
                seen.add(arch.id)
                archs.append(arch)
        # the variants and the whole networks in one timing (interleaved where the backend
        # can): the fixed part is a difference of the two
        items = ([(v.key, seeded(v.build), inputs(v.input_shapes)) for v in variants]
                 + [(f"arch-{a.id}", seeded(lambda a=a: space.build(a)), inputs([shape]))
                    for a in archs])
        with torch.no_grad():
            timed = measure_modules(self.timer, items, ctx, export_dir,
                                    f"latency table: {len(variants)} variants + {len(archs)} "
                                    "whole architectures", seed)
        table = {v.key: timed[v.key] for v in variants}
        whole = {k: v for k, v in timed.items() if k.startswith("arch-")}
        table_ms = {k: v.value for k, v in table.items()}

        def summed(arch) -> float:
            return sum(table_ms[p.key] for p in space.latency_parts(arch, shape))

        cal = archs[:self.params.calibration]
        fixed = statistics.median(whole[f"arch-{a.id}"].value - summed(a) for a in cal)
        rows = [{"arch": a.id, "measured_ms": whole[f"arch-{a.id}"].value,
                 "predicted_ms": summed(a) + fixed} for a in archs[self.params.calibration:]]
        for r in rows:
            r["rel_error"] = abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        report: dict[str, Any] = {"n": len(rows), "rows": rows,
                                  "calibration": [a.id for a in cal]}
        if rows:
            report["mean_rel_error"] = float(np.mean([r["rel_error"] for r in rows]))
            report["max_rel_error"] = float(np.max([r["rel_error"] for r in rows]))
        if len(rows) >= 2:
            tau = kendalltau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
            report["kendall_tau"] = None if math.isnan(tau.statistic) else float(tau.statistic)
        if fixed < 0:
            import warnings

            warnings.warn(f"latency_lut: the fixed part is negative ({fixed:.3g} ms): the blocks "
                          "timed alone cost more than inside the network (timing noise, or a "
                          "per-call overhead); more repeats or calibration architectures help",
                          RuntimeWarning, stacklevel=2)
        ctx.log(f"latency_lut: {len(table)} variants + fixed part {fixed:.3g} ms on "
                f"{self.timer.device()}; prediction error on {len(rows)} architectures: "
                + (f"mean {report['mean_rel_error']:.1%}, max {report['max_rel_error']:.1%}"
                   if rows else "not checked (check: 0)"))
        return {"backend": self.timer.name, "device": self.timer.device(),
                "runtime": self.timer.runtime(), "input_shape": list(shape),
                "table": table_ms, "table_details": {k: v.details for k, v in table.items()},
                "fixed_ms": fixed, "report": report,
                "jobs": len(table) + len(archs)}

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        if self.table is None:
            self.prepare(candidate.space, ctx)
        parts = candidate.space.latency_parts(candidate.arch, self._shape(candidate.space))
        missing = sorted({p.key for p in parts} - set(self.table))
        if missing:
            raise ValueError(f"latency_lut: the space's variants miss {missing[0]} "
                             f"({len(missing)} in all); its latency_variants() must list "
                             "every key latency_parts() returns")
        blocks = sum(self.table[p.key] for p in parts)
        return Value(blocks + self.fixed_ms, {
            "blocks_ms": blocks, "fixed_ms": self.fixed_ms, "parts": len(parts),
            "table_entries": len(self.table), "runtime": self.timer.runtime(),
            "lut_mean_rel_error": self.report.get("mean_rel_error"),
            "lut_kendall_tau": self.report.get("kendall_tau")})


def _timing(backend: LatencyBackend) -> str:
    """How :func:`measure_modules` times on ``backend``."""
    if backend.asynchronous:
        return "device jobs"
    return "interleaved" if backend.paired else "one after the other"


def _code_versions(space) -> dict[str, str]:
    """The installed versions of the distributions that provide the space's module and torch
    (which exports its graphs): ``{distribution: version}``."""
    from importlib import metadata

    top = type(space).__module__.split(".")[0]
    owners = metadata.packages_distributions()
    out = {}
    for dist in sorted({*owners.get(top, ()), *owners.get("torch", ())}):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _params_of(space) -> Any:
    params = getattr(space, "params", None)
    return params.model_dump() if hasattr(params, "model_dump") else repr(space)
