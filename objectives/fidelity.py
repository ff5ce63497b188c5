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

A search space offers this by implementing ``teacher()`` (the full teacher
model, whose ``forward(*inputs, return_features=True)`` returns ``(output,
{feature: tensor})`` like the candidates'), ``fidelity_inputs()`` (a list of
input tuples), ``feature_channels(arch)`` (``{feature: teacher channel index
tensor or None}``) and, for distillation, ``align(model, arch, ctx, steps=,
lr=, batch_size=, seed=)``; ``sd_unet`` does. With ``part`` (e.g.
``vae_decoder``) the space's ``teacher(part)``, ``fidelity_inputs(part)`` and
``feature_channels(arch, part)`` are used and the candidate's part is scored.

A proxy: it measures agreement with the teacher on these inputs, not image
quality; with a randomly initialised teacher it says how much of the
teacher's function survives the surgery.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from nasframe import Objective, Value
from nasframe.errors import ConfigError
from objectives._common import check_float, check_int, check_part, require_part

if TYPE_CHECKING:
    from nasframe import Candidate, Context, SearchSpace

PROTOCOL = ("teacher", "fidelity_inputs", "feature_channels")
DISTILL_DEFAULTS = {"steps": 0, "lr": 1e-3, "batch_size": 4, "seed": 0}


class Fidelity(Objective):
    """Agreement with the teacher (dB of signal over error, stage features and output)."""

    name = "fidelity"
    direction = "max"
    kind = "proxy"
    backend = "torch"
    unit = "dB"
    cost = 5.0

    def __init__(self, feature_weight: float = 0.5, distill: dict[str, Any] | None = None,
                 part: str | None = None):
        self.part = check_part(part, "fidelity.params.part")
        fw = check_float(feature_weight, "fidelity.params.feature_weight", positive=False)
        if not 0 <= fw <= 1:
            raise ValueError(f"fidelity.params.feature_weight: must be in [0, 1] (0: output "
                             f"only, 1: stage features only), got {feature_weight!r}")
        self.feature_weight = fw
        distill = dict(distill or {})
        unknown = [k for k in distill if k not in DISTILL_DEFAULTS]
        if unknown:
            raise ValueError(f"fidelity.params.distill: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(DISTILL_DEFAULTS)}")
        self.distill = {**DISTILL_DEFAULTS, **distill}
        check_int(self.distill["steps"], "fidelity.params.distill.steps", 0)
        check_float(self.distill["lr"], "fidelity.params.distill.lr")
        check_int(self.distill["batch_size"], "fidelity.params.distill.batch_size", 1)
        check_int(self.distill["seed"], "fidelity.params.distill.seed", 0)

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        missing = [m for m in PROTOCOL if not hasattr(space, m)]
        if missing:
            raise ConfigError(f"objective 'fidelity' needs a search space with a teacher "
                              f"({', '.join(PROTOCOL)}; sd_unet has them); '{space.name}' "
                              f"lacks {', '.join(missing)}")
        if self.part is not None:
            require_part(space, self.part, "fidelity.params.part")
            if self.distill["steps"]:
                raise ConfigError(f"fidelity.params.distill.steps = {self.distill['steps']}: "
                                  f"distillation works on the main model only, not on part "
                                  f"{self.part!r}; set steps: 0")
        if self.distill["steps"] and not hasattr(space, "align"):
            raise ConfigError(f"fidelity.params.distill.steps = {self.distill['steps']}: "
                              f"'{space.name}' cannot distil blocks (no `align`); set steps: 0")
        # made (or loaded) now, so that every candidate inherits from it
        space.teacher(self.part) if self.part is not None else space.teacher()

    def device(self, ctx: Context) -> str:
        return "cpu"

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        space, arch = candidate.space, candidate.arch
        part = self.part
        model = candidate.module(part)
        details: dict[str, Any] = {"feature_weight": self.feature_weight}
        if part is not None:
            details["part"] = part
        if self.distill["steps"]:
            d = self.distill
            report = space.align(model, arch, ctx, steps=d["steps"], lr=d["lr"],
                                 batch_size=d["batch_size"], seed=d["seed"])
            details["distill"] = {"steps": d["steps"], **{k: report[k] for k in
                                                          ("pairs", "trained", "cached", "seconds")}}
        if part is None:
            teacher, channels = space.teacher(), space.feature_channels(arch)
            inputs_list = space.fidelity_inputs()
        else:
            teacher, channels = space.teacher(part), space.feature_channels(arch, part)
            inputs_list = space.fidelity_inputs(part)
        err: dict[str, float] = {}
        ref: dict[str, float] = {}
        samples = 0
        model.eval()
        with torch.inference_mode():
            for inputs in inputs_list:
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
        combined = self.feature_weight * stage_mean + (1 - self.feature_weight) * rel["output"]
        value = -10 * math.log10(max(combined, 1e-12))
        details.update(output_rel_mse=rel["output"], stage_rel_mse=stages,
                       stage_mean_rel_mse=stage_mean, samples=samples)
        return Value(value, details)
