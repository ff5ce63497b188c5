"""Restoration quality on the search space's validation set, and the transformer count.

``psnr`` and ``ssim`` score a candidate's model on the validation pairs its
search space provides (capability :class:`~nasframe.capabilities.ValidationPairs`:
``(degraded, clean)`` tensors of shape ``(1, C, H, W)`` in [0, 1]), built with
trained weights (:class:`~nasframe.capabilities.TrainedWeights`); outputs are
clamped to [0, 1]. They are measurements of the model as built (for
``hybrid_unet``: assembled from the pre-aligned bank, not fine-tuned).
``transformer_count`` reads the block graph (:class:`~nasframe.capabilities.BlockKinds`):
the number of nodes of kind ``transformer``; a proxy for latency (ENS).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import Objective, Value
from nasframe.capabilities import BlockKinds, Finetunable, TrainedWeights, ValidationPairs
from nasframe.params import Field, Float, Int, Params

if TYPE_CHECKING:
    from nasframe import Candidate, Context, SearchSpace


class _ImageQuality(Objective):
    direction = "max"
    kind = "measured"
    backend = "torch"
    cost = 10.0
    requires = (ValidationPairs, TrainedWeights)

    class Params(Params):
        max_images: Int | None = Field(None, ge=1, le=1_000_000)
        """Score only the first N validation images (default: all)."""

    def device(self, ctx: Context) -> str:
        return ctx.accel.describe()     # the experiment's device (and autocast precision)

    def score(self, output, target) -> float:
        raise NotImplementedError

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        pairs = candidate.space.validation_pairs()[:self.params.max_images]
        accel = ctx.accel
        scores = []
        # on the experiment's device; the shared model goes back to the CPU afterwards
        with accel.placed(candidate.model.eval()) as model, torch.inference_mode():
            for inp, target in pairs:
                with accel.autocast():
                    out = model(accel.to(inp))
                scores.append(self.score(accel.host(out).clamp(0, 1), target))
        return Value(sum(scores) / len(scores), {"images": len(pairs),
                                                 "per_image": [round(s, 4) for s in scores]})


class PSNR(_ImageQuality):
    """Mean PSNR (dB, peak 1) over the validation images."""

    name = "psnr"
    unit = "dB"

    def score(self, output, target) -> float:
        from nasframe_objectives.images import psnr

        return min(psnr(output, target), 100.0)   # an exact copy: 100 dB, not infinity


class SSIM(_ImageQuality):
    """Mean SSIM (scikit-image, Gaussian window, data range 1, over RGB) on the validation images."""

    name = "ssim"
    unit = ""
    dependencies = ("skimage",)
    install_hint = "pip install 'nasframe[restoration]'"

    def score(self, output, target) -> float:
        from skimage.metrics import structural_similarity

        a = output[0].permute(1, 2, 0).double().numpy()
        b = target[0].permute(1, 2, 0).double().numpy()
        return float(structural_similarity(a, b, channel_axis=2, data_range=1.0,
                                           gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))


class FinetunedPSNR(_ImageQuality):
    """Mean PSNR (dB) on the validation images after a short end-to-end fine-tuning of the
    candidate (for hybrid_unet: the hybrid assembled from the pre-aligned bank, trained for
    `steps` steps); reports the PSNR every `eval_every` steps, so a pruner can stop it early."""

    name = "finetuned_psnr"
    unit = "dB"
    cost = 100.0
    reports_intermediate = True
    requires = (ValidationPairs, TrainedWeights, Finetunable)
    small_params = {"steps": 4, "eval_every": 2, "max_images": 2}

    class Params(_ImageQuality.Params):
        steps: Int = Field(100, ge=1, le=10_000_000)
        """Fine-tuning steps (the full fidelity; a pruner may stop earlier)."""
        eval_every: Int = Field(25, ge=1, le=10_000_000)
        """Validation PSNR reported every N steps (and before the first step)."""
        lr: Float | None = Field(None, gt=0, le=10)
        """Learning rate (default: the space's fine-tuning default)."""

    def score(self, output, target) -> float:
        from nasframe_objectives.images import psnr

        return min(psnr(output, target), 100.0)

    def _psnr(self, model, pairs, accel) -> float:
        import torch

        scores = []
        with torch.inference_mode():
            for inp, target in pairs:
                with accel.autocast():
                    out = model(accel.to(inp))
                scores.append(self.score(accel.host(out).clamp(0, 1), target))
        return sum(scores) / len(scores)

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import copy

        from nasframe.pruning import TrialPruned

        p = self.params
        pairs = candidate.space.validation_pairs()[:p.max_images]
        accel = ctx.accel
        model = accel.to(copy.deepcopy(candidate.model))   # the shared model stays as built
        start = self._psnr(model.eval(), pairs, accel)
        candidate.report(start, 0)
        last = {"step": 0, "psnr": start}

        def on_step(k: int) -> None:
            if k % p.eval_every and k != p.steps:
                return
            last.update(step=k, psnr=self._psnr(model, pairs, accel))
            candidate.report(last["psnr"], k)
            if candidate.should_prune():
                raise TrialPruned()

        candidate.space.finetune(model, p.steps, seed=candidate.seed, lr=p.lr, on_step=on_step,
                                 accel=accel)
        return Value(last["psnr"], {"images": len(pairs), "steps": p.steps,
                                    "psnr_before": round(start, 4)})


class TransformerCount(Objective):
    """Number of transformer blocks in the block graph (nodes with ``kind == "transformer"``)."""

    name = "transformer_count"
    direction = "min"
    kind = "proxy"
    backend = "networkx"
    unit = "blocks"
    cost = 0.01
    requires = (BlockKinds,)

    def check_space(self, space: SearchSpace) -> str | None:
        kinds = space.block_kinds()
        if "transformer" not in kinds:
            return (f"objective 'transformer_count' counts graph nodes of kind 'transformer'; "
                    f"search space '{space.name}' has none (its kinds: {', '.join(kinds)})")
        return None

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        g = candidate.graph
        kinds = [d.get("kind") for _, d in g.nodes(data=True)]
        slots = sum(k in ("transformer", "ssm") for k in kinds)
        return Value(float(sum(k == "transformer" for k in kinds)), {"slots": slots})
