"""A demo quality proxy for image-to-image models: PSNR after a short denoising fit."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nasframe import Objective, Value
from nasframe.capabilities import ImageToImage
from nasframe.params import Field, Float, Int, Params
from nasframe_objectives._common import model_mode
from nasframe_objectives.images import centre_crop, photo, psnr

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context, SearchSpace

#: Training and validation photos are different images (split by image, not by crop).
TRAIN_IMAGES = ("astronaut", "rocket", "motorcycle_left")
VAL_IMAGES = ("coffee", "chelsea")
SHORT_SIDE = 128  # every photo is downscaled to this shorter side
VAL_CROP = 128  # validation: the central VAL_CROP x VAL_CROP crop of each image


def _seed(*parts: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def _weights_restored(model: torch.nn.Module) -> Iterator[None]:
    """Snapshot parameters and buffers; put them back (and clear grads) on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)
        for p in model.parameters():
            p.grad = None


class QuickPSNR(Objective):
    """Validation PSNR (dB) of the candidate after ``steps`` Adam steps of
    Gaussian denoising, a cheap proxy for its quality on image restoration.

    The model must map a (N, 3, H, W) image in [0, 1] to the denoised
    (N, 3, H, W) image (any global residual is the model's own). Training: the
    freshly built ``candidate.model`` is fitted on random ``patch`` x ``patch``
    crops (``batch_size`` per step) of photos TRAIN_IMAGES with noise of
    standard deviation ``sigma`` / 255, by MSE; its weights and mode are
    restored afterwards, so the candidate's model is left as built.
    Validation: the 128x128 central crops of the other photos VAL_IMAGES, with
    fixed noise; the value is the mean PSNR over them (output clamped to
    [0, 1]), and ``details['identity_psnr']`` the PSNR of the noisy input.
    Deterministic given ``ctx.seed`` and ``candidate.seed`` (and the thread
    count); validation noise depends on ``ctx.seed`` only.
    """

    name = "quick_psnr"
    direction = "max"
    kind = "proxy"
    backend = "torch"
    unit = "dB"
    cost = 20.0
    requires = (ImageToImage,)
    dependencies = ("skimage",)
    install_hint = "pip install 'nasframe[restoration]'"
    small_params = {"steps": 5}

    class Params(Params):
        steps: Int = Field(60, ge=0, le=1_000_000)
        """Adam steps of denoising training before PSNR is measured."""
        lr: Float = Field(2e-3, gt=0, le=10)
        """Adam learning rate."""
        batch_size: Int = Field(16, ge=1, le=4096)
        """Random crops per step."""
        patch: Int = Field(32, ge=8, le=SHORT_SIDE)
        """Side of the training crops, in pixels."""
        sigma: Float = Field(25.0, gt=0, le=255)
        """Noise standard deviation on the 0-255 scale."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        p = self.params
        self.steps, self.lr, self.batch_size = p.steps, p.lr, p.batch_size
        self.patch, self.sigma = p.patch, p.sigma
        self._data: dict[int, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}

    # -- data ------------------------------------------------------------
    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        self._dataset(ctx.seed)

    def _dataset(self, seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(training images [(3, H, W)], clean (V, 3, 128, 128), noisy (V, 3, 128, 128))."""
        import torch

        if seed not in self._data:
            train = [photo(n, SHORT_SIDE) for n in TRAIN_IMAGES]
            clean = torch.stack([centre_crop(photo(n, SHORT_SIDE), VAL_CROP) for n in VAL_IMAGES])
            noisy = torch.empty_like(clean)
            for i in range(len(VAL_IMAGES)):  # noise fixed per validation image
                gen = torch.Generator().manual_seed(_seed(seed, 1, i))
                noise = torch.randn(clean[i].shape, generator=gen)
                noisy[i] = clean[i] + noise * (self.sigma / 255.0)
            self._data[seed] = (train, clean, noisy)
        return self._data[seed]

    def _batch(self, train: list[torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A (noisy, clean) pair of (batch_size, 3, patch, patch) random crops."""
        import torch

        crops = []
        for _ in range(self.batch_size):
            img = train[int(torch.randint(len(train), (1,), generator=gen))]
            h, w = img.shape[-2:]
            top = int(torch.randint(h - self.patch + 1, (1,), generator=gen))
            left = int(torch.randint(w - self.patch + 1, (1,), generator=gen))
            crops.append(img[:, top:top + self.patch, left:left + self.patch])
        clean = torch.stack(crops)
        noise = torch.randn(clean.shape, generator=gen)
        return clean + noise * (self.sigma / 255.0), clean

    # -- evaluation ------------------------------------------------------
    def device(self, ctx: Context) -> str:
        return ctx.accel.describe()     # the experiment's device (and autocast precision)

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        train, clean, noisy = self._dataset(ctx.seed)
        accel = ctx.accel
        gen = torch.Generator().manual_seed(_seed(ctx.seed, 0, candidate.seed))
        # on the experiment's device; the shared model goes back where it was afterwards
        with accel.placed(candidate.model) as model, _weights_restored(model):
            params = [p for p in model.parameters() if p.requires_grad]
            if params and self.steps:
                opt = torch.optim.Adam(params, lr=self.lr)
                scaler = accel.grad_scaler()
                with model_mode(model, training=True), torch.enable_grad():
                    for _ in range(self.steps):
                        x, y = accel.to(self._batch(train, gen))
                        with accel.autocast():
                            out = model(x)
                        _check_output(out, x)
                        loss = torch.nn.functional.mse_loss(out.float(), y)
                        accel.step(loss, opt, scaler)
            with model_mode(model, training=False), torch.no_grad(), accel.autocast():
                outs = [accel.host(model(accel.to(noisy[i:i + 1]))) for i in range(len(noisy))]
        for out, x in zip(outs, noisy):
            _check_output(out, x[None])
        value = sum(psnr(o[0], c) for o, c in zip(outs, clean)) / len(outs)
        identity = sum(psnr(n, c) for n, c in zip(noisy, clean)) / len(noisy)
        return Value(value, {
            "steps": self.steps,
            "sigma": self.sigma,
            "train_images": list(TRAIN_IMAGES),
            "val_images": list(VAL_IMAGES),
            "identity_psnr": identity,
        })


def _check_output(out: object, x: torch.Tensor) -> None:
    import torch

    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"quick_psnr needs an image-to-image model mapping {tuple(x.shape)} to the "
                         f"same shape (the denoised image); the model returned {got}")
