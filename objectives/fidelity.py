"""``fidelity``: how closely a shrunken model still follows its teacher.

On the search space's fixed inputs, the candidate and its teacher run side by
side; for every stage feature both produce, and for the output, the error is
the relative MSE (``mean((student - teacher)^2) / mean(teacher^2)``; narrowed
features are compared on the teacher channels they kept). The value is

    fidelity = -10 * log10(w * mean(stage errors) + (1 - w) * output error)   [dB]

with ``w = feature_weight``: 20 dB means the errors are 1 % of the teacher's
signal power. Higher is better. With ``distill: {steps: N}`` the blocks that
changed are first distilled for ``N`` steps to mimic their teacher blocks
(module-wise surrogates, cached per block variant by the space).

A search space offers this with the capability
:class:`~nasframe.capabilities.Teacher` (``teacher()``, ``fidelity_inputs()``,
``feature_channels(arch)``) and, for distillation,
:class:`~nasframe.capabilities.BlockAlignment` (``align``); ``sd_unet`` does.
With ``part`` (e.g. ``vae_decoder``) the space's ``teacher(part)``,
``fidelity_inputs(part)`` and ``feature_channels(arch, part)`` are used and
the candidate's part is scored.

A proxy: it measures agreement with the teacher on these inputs, not image
quality; with a randomly initialised teacher it says how much of the
teacher's function survives the surgery.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import model_validator

from nasframe import Value
from nasframe.capabilities import BlockAlignment, Capability, Teacher
from nasframe.params import Field, Float, Int, Params
from nasframe_objectives._common import PartObjective, PartParams

if TYPE_CHECKING:
    from nasframe import Candidate, Context, SearchSpace

class DistillParams(Params):
    steps: Int = Field(0, ge=0, le=1_000_000)
    """Distillation steps per changed block (0: none)."""
    lr: Float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the distillation."""
    batch_size: Int = Field(4, ge=1, le=4096)
    """Teacher inputs per distillation step."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the distillation (default: the experiment's seed)."""


class Fidelity(PartObjective):
    """Agreement with the teacher (dB of signal over error, stage features and output)."""

    name = "fidelity"
    direction = "max"
    kind = "proxy"
    backend = "torch"
    unit = "dB"
    cost = 5.0
    requires = (Teacher,)

    class Params(PartParams):
        feature_weight: Float = Field(0.5, ge=0, le=1)
        """Weight of the stage features against the output (0: output only, 1: features only)."""
        distill: DistillParams = DistillParams()
        """Distil each changed block first: steps, lr, batch_size, seed."""

        @model_validator(mode="after")
        def _no_distill_on_parts(self):
            if self.part is not None and self.distill.steps:
                raise ValueError(f"distill.steps = {self.distill.steps}: distillation works on "
                                 f"the main model only, not on part {self.part!r}; set steps: 0")
            return self

    def requirements(self) -> tuple[type[Capability], ...]:
        reqs = super().requirements()
        return (*reqs, BlockAlignment) if self.params.distill.steps else reqs

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        # made (or loaded) now, so that every candidate inherits from it
        space.teacher(self.part)

    def device(self, ctx: Context) -> str:
        return ctx.accel.describe()     # the experiment's device (and autocast precision)

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        space, arch = candidate.space, candidate.arch
        part = self.part
        model = candidate.module(part)
        fw = self.params.feature_weight
        details: dict[str, Any] = {"feature_weight": fw}
        if part is not None:
            details["part"] = part
        d = self.params.distill
        if d.steps:
            report = space.align(model, arch, ctx, steps=d.steps, lr=d.lr,
                                 batch_size=d.batch_size, seed=ctx.seed_for(d.seed))
            details["distill"] = {"steps": d.steps, **{k: report[k] for k in
                                                       ("pairs", "trained", "cached", "seconds")}}
        teacher, channels = space.teacher(part), space.feature_channels(arch, part)
        inputs_list = space.fidelity_inputs(part)
        err: dict[str, float] = {}
        ref: dict[str, float] = {}
        samples = 0
        accel = ctx.accel
        model.eval()
        # both on the experiment's device for the pass; back where they were afterwards
        with accel.placed(teacher) as teacher, accel.placed(model) as model, \
                torch.inference_mode(), accel.autocast():
            for inputs in inputs_list:
                inputs = accel.to(inputs)
                if channels:
                    t_out, t_feat = teacher(*inputs, return_features=True)
                    s_out, s_feat = model(*inputs, return_features=True)
                else:                                   # output only
                    t_out, t_feat, s_out, s_feat = teacher(*inputs), {}, model(*inputs), {}
                samples += t_out.shape[0]
                pairs = [("output", s_out, t_out)]
                for name, idx in channels.items():
                    if name in s_feat and name in t_feat:
                        t = t_feat[name] if idx is None else t_feat[name].index_select(1, idx)
                        pairs.append((name, s_feat[name], t))
                for name, s, t in pairs:
                    err[name] = err.get(name, 0.0) + float((s.float() - t.float()).pow(2).sum())
                    ref[name] = ref.get(name, 0.0) + float(t.float().pow(2).sum())
        rel = {k: err[k] / max(ref[k], 1e-30) for k in err}
        stages = {k: v for k, v in rel.items() if k != "output"}
        stage_mean = sum(stages.values()) / len(stages) if stages else rel["output"]
        combined = fw * stage_mean + (1 - fw) * rel["output"]
        value = -10 * math.log10(max(combined, 1e-12))
        details.update(output_rel_mse=rel["output"], stage_rel_mse=stages,
                       stage_mean_rel_mse=stage_mean, samples=samples)
        return Value(value, details)
