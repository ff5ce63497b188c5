"""Objectives of a multi-task model on one shared quantised graph (QUAD).

``multitask_psnr``
    every task's PSNR after quantisation (``method``: ``quad`` = one shared profile
    with adapters trained for it; or the baselines ``separate``, ``naive``,
    ``shared_ptq``, ``fp32``); the value is the ``min`` (worst task, default) or
    ``mean`` over the tasks; both and every task's number are in the details.
``deploy_memory``
    bytes on the device for N tasks: one quantised graph + N adapters (the value,
    in MB) vs N separate merged models; the ratio is in the details (or the value,
    with ``report: ratio``).

Both need a space with the :class:`~nasframe.capabilities.MultiTask` capability
(``quad``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nasframe import Objective, Value
from nasframe.capabilities import MultiTask, TrainedWeights
from nasframe.params import Field, Int, Params

if TYPE_CHECKING:
    from nasframe import Candidate, Context, SearchSpace


class MultitaskPSNR(Objective):
    """Each task's PSNR (dB) after quantisation; the worst (or mean) over the tasks."""

    name = "multitask_psnr"
    direction = "max"
    kind = "measured"
    backend = "torch-fakequant"
    unit = "dB"
    cost = 20.0
    requires = (MultiTask, TrainedWeights)

    class Params(Params):
        method: Literal["quad", "shared_ptq", "separate", "naive", "fp32"] = "quad"
        """quad (shared profile + QAT), shared_ptq, separate (a profile per task), naive (calibrated on the first task), fp32."""
        reduce: Literal["min", "mean"] = "min"
        """The value: the worst task (min) or the mean over the tasks."""

    def device(self, ctx: Context) -> str:
        return "cpu (simulated integer arithmetic)"

    def check_space(self, space: SearchSpace) -> str | None:
        if not isinstance(space, MultiTask):
            return None
        methods = space.quality_methods()
        if self.params.method not in methods:
            return (f"params.method: search space '{space.name}' offers {', '.join(methods)}, "
                    f"not {self.params.method!r}")
        return None

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        space = candidate.space
        per_task = space.task_quality(candidate.arch, candidate.model, ctx, self.params.method)
        vals = list(per_task.values())
        lo, mean = min(vals), sum(vals) / len(vals)
        return Value(lo if self.params.reduce == "min" else mean,
                     {"method": self.params.method, "per_task": {k: round(v, 4) for k, v in per_task.items()},
                      "min": round(lo, 4), "mean": round(mean, 4)})


class DeployMemory(Objective):
    """Device bytes of N tasks: one quantised graph + N adapters (MB), vs N separate models."""

    name = "deploy_memory"
    direction = "min"
    kind = "proxy"
    backend = "bit-widths"
    unit = "MB"
    cost = 0.1
    requires = (MultiTask,)

    class Params(Params):
        tasks: Int | None = Field(None, ge=1, le=100_000)
        """N, the number of tasks shipped (default: the space's tasks)."""
        report: Literal["bytes", "ratio"] = "bytes"
        """The value: the shared deployment's MB (minimise) or separate/shared (then set direction: max)."""

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        space = candidate.space
        n = self.params.tasks or len(space.tasks())
        b = space.deploy_bytes(candidate.arch, candidate.model, n)
        details = {"tasks": n, "shared_mb": b["shared_bytes"] / 1e6,
                   "separate_mb": b["separate_bytes"] / 1e6, "base_mb": b["base_bytes"] / 1e6,
                   "adapter_mb": b["adapter_bytes"] / 1e6, "ratio": b["ratio"]}
        value = b["ratio"] if self.params.report == "ratio" else b["shared_bytes"] / 1e6
        return Value(value, details)
