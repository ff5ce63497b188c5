"""Restoration quality on the search space's validation set, and the transformer count.

``psnr`` and ``ssim`` score a candidate's model on the validation pairs its
search space provides through ``space.validation_pairs()`` (a list of
``(degraded, clean)`` tensors of shape ``(1, C, H, W)`` in [0, 1]); outputs are
clamped to [0, 1]. They are measurements of the model as built (for
``hybrid_unet``: assembled from the pre-aligned bank, not fine-tuned).
``transformer_count`` reads the block graph: the number of nodes of kind
``transformer``; a proxy for latency (ENS).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import Objective, Value
from objectives._common import check_int

if TYPE_CHECKING:
    from nasframe import Candidate, Context, SearchSpace


def _pairs(space: SearchSpace, who: str):
    get = getattr(space, "validation_pairs", None)
    if get is None:
        from nasframe.errors import ConfigError

        raise ConfigError(f"objective '{who}' needs a search space with validation data "
                          f"(a `validation_pairs()` method, as hybrid_unet has); "
                          f"'{space.name}' has none")
    return get()


class _ImageQuality(Objective):
    direction = "max"
    kind = "measured"
    backend = "torch"
    cost = 10.0

    def __init__(self, max_images: int | None = None):
        self.max_images = None if max_images is None else check_int(
            max_images, f"{self.name}.params.max_images", 1)

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        if not hasattr(space, "validation_pairs"):
            _pairs(space, self.name)

    def device(self, ctx: Context) -> str:
        return "cpu"

    def score(self, output, target) -> float:
        raise NotImplementedError

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        pairs = _pairs(candidate.space, self.name)[:self.max_images]
        model = candidate.model.eval()
        scores = []
        with torch.inference_mode():
            for inp, target in pairs:
                scores.append(self.score(model(inp).clamp(0, 1), target))
        return Value(sum(scores) / len(scores), {"images": len(pairs),
                                                 "per_image": [round(s, 4) for s in scores]})


class PSNR(_ImageQuality):
    """Mean PSNR (dB, peak 1) over the validation images."""

    name = "psnr"
    unit = "dB"

    def score(self, output, target) -> float:
        from objectives.quick_psnr import psnr

        return min(psnr(output, target), 100.0)   # an exact copy: 100 dB, not infinity


class SSIM(_ImageQuality):
    """Mean SSIM (scikit-image, Gaussian window, data range 1, over RGB) on the validation images."""

    name = "ssim"
    unit = ""

    def score(self, output, target) -> float:
        from skimage.metrics import structural_similarity

        a = output[0].permute(1, 2, 0).double().numpy()
        b = target[0].permute(1, 2, 0).double().numpy()
        return float(structural_similarity(a, b, channel_axis=2, data_range=1.0,
                                           gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))


class TransformerCount(Objective):
    """Number of transformer blocks in the block graph (nodes with ``kind == "transformer"``)."""

    name = "transformer_count"
    direction = "min"
    kind = "proxy"
    backend = "networkx"
    unit = "blocks"
    cost = 0.01

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        g = candidate.graph
        kinds = [d.get("kind") for _, d in g.nodes(data=True)]
        slots = sum(k in ("transformer", "ssm") for k in kinds)
        return Value(float(sum(k == "transformer" for k in kinds)), {"slots": slots})
