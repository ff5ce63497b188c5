"""TOC-SR's second half: super-resolution adaptation of a backbone, then one-step distillation.

**Adaptation.** Any ``sd_unet`` architecture (a run's pick, or a reference such
as the expanded ``tiny16`` teacher) becomes a conditional latent denoiser: the
bicubic upsampling of the LR image is encoded by the teacher's VAE (posterior
mean x ``latent_scale``: the *LR latent*, the HR latent's size) and
concatenated to the noisy latent along the channels. The backbone's
``conv_in`` is widened to take it (:func:`widen_conv_in`): its old filters stay
on the first ``C`` input channels and the ``C`` new input channels get **zero
filters**, so at the start the model computes exactly what the backbone
computed, whatever the condition holds (the rule of the 16-channel expansion,
:mod:`.expand`). It is trained as a DDPM noise predictor (diffusers
``DDPMScheduler``, the teacher's schedule) on HR latents of x4 pairs
(:mod:`.srdata`) and sampled with diffusers' ``DDIMScheduler`` (``trailing``
spacing, deterministic) in ``sample_steps`` steps.

**One-step distillation** (regression to the teacher's samples, Luhman &
Luhman 2021): the student is the same network initialised from the SR model;
one call at ``t = 999`` on ``[z, c]`` (noise ``z``, LR latent ``c``) gives
``eps``, read as ``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)``, and it is
trained to minimise ``MSE(x0_student(z, c), DDIM_N(z, c))``: the N-step SR
model's deterministic sample from the *same* noise and condition. At the start
it is the SR model's own one-step estimate.

**Fidelity decoder** (:class:`FidelityDecoder`; StableSR's controllable feature
wrapping reduced to the output): every image made through a small VAE is bounded
by its reconstruction PSNR, so the student's latent is decoded as
``bicubic + R([h, bicubic])``, ``h`` the frozen VAE decoder's last feature map (``conv_out``'s input), ``R``
a small convolutional path whose last layer starts at zero (so it starts as bicubic)
trained by L1 to the HR crops on the student's latents of the training pairs. The same
path trained on the LR latent itself (no SR model) is the ablation that tells what the
SR model adds.

All are cached like the teacher (:mod:`.pretrain`): safetensors files in the
run's artifact cache (``sd_unet/sr``, ``sd_unet/sr_student``,
``sd_unet/sr_fidelity_student``, ``sd_unet/sr_fidelity_lr``) under a hash of
everything that determines them (backbone weights and plan, VAE, settings,
data). :func:`adapt` runs both and measures PSNR/SSIM (scikit-image) of
bicubic, the VAE's reconstruction of the HR image (the ceiling of any image
made through it), the N-step model and the one-step student on held-out
images, GMACs per image (fvcore, :func:`nasframe_objectives.cost.count_macs`)
and torch latency (the ``latency`` objective's ``torch`` backend) of the two
pipelines. Command line::

    python -m nasframe_search_spaces.sd_unet.sr RUN_DIR              # the run's pick
    python -m nasframe_search_spaces.sd_unet.sr examples/tocsr.yaml --arch sd15
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import AfterValidator
from torch import nn

from nasframe.params import Bool, Field, Float, Int, Params

if TYPE_CHECKING:
    from nasframe.architecture import Architecture
    from nasframe.context import Context
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

VERSION = 1
#: the settings that determine the SR model (and the pool every later stage draws from);
#: the others (student, fidelity decoder, evaluation, latency) have their own keys or none
SR_MODEL_SETTINGS = {"scale", "hr_size", "pool", "steps", "batch_size", "lr", "vae_steps", "vae_lr",
                     "data", "seed"}
#: ... and those of deblurring (entered only for `task: deblur`, so SR keys stay as they were)
DEBLUR_MODEL_SETTINGS = {"task", "kernel", "blur_sigma", "motion_length", "blurs_per_image"}
#: the degraded input and its names in reports, per task
TASKS = {"sr": {"baseline": "bicubic", "degraded": "LR", "target": "HR", "report": "sr.json",
                "what": "super-resolution"},
         "deblur": {"baseline": "blurred", "degraded": "blurred", "target": "sharp",
                    "report": "deblur.json", "what": "deblurring"}}
T_MAX = 999


def _span(low: float, high: float):
    def check(v: tuple[float, float]) -> tuple[float, float]:
        if not low <= v[0] <= v[1] <= high:
            raise ValueError(f"give [min, max] with {low} <= min <= max <= {high}")
        return v
    return AfterValidator(check)


class SRParams(Params):
    """Settings of the adaptation to a restoration task (super-resolution or deblurring)
    and the one-step distillation."""

    task: Literal["sr", "deblur"] = "sr"
    """``sr``: x ``scale`` super-resolution (condition: the bicubic upsampling's latent);
    ``deblur``: deblurring (condition: the blurred image's latent)."""
    scale: Int = Field(4, ge=2, le=8)
    """Upscaling factor (``task: sr``)."""
    kernel: Literal["gaussian", "motion", "mixed"] = "mixed"
    """Synthetic blur of the photos (``task: deblur``): motion lines, Gaussians, or either."""
    blur_sigma: Annotated[tuple[Float, Float], _span(0.1, 20)] = (1.0, 3.0)
    """Std range of the Gaussian kernels (pixels)."""
    motion_length: Annotated[tuple[Float, Float], _span(1, 100)] = (5.0, 15.0)
    """Length range of the motion kernels (pixels)."""
    blurs_per_image: Int = Field(8, ge=1, le=10_000)
    """Blurred copies (kernels) of each training photo; held-out photos get as many."""
    hr_size: Int = Field(64, ge=16, le=4096)
    """Side of the HR training crops (pixels; a multiple of the VAE's factor x 2^(U-Net levels - 1))."""
    pool: Int = Field(256, ge=1, le=1_000_000)
    """Training pairs encoded once (random crops with flips)."""
    steps: Int = Field(1000, ge=0, le=10_000_000)
    """Conditional denoising steps of the SR model."""
    batch_size: Int = Field(8, ge=1, le=4096)
    """Latents per training step (both stages)."""
    lr: Float = Field(5e-4, gt=0, le=10)
    """Adam learning rate of the SR model."""
    sample_steps: Int = Field(20, ge=1, le=1000)
    """N: DDIM steps of the SR model's sampler."""
    distill_steps: Int = Field(300, ge=0, le=10_000_000)
    """Regression steps of the one-step student."""
    distill_targets: Int = Field(64, ge=1, le=1_000_000)
    """(noise, LR latent) pairs the N-step model samples for the student to regress to."""
    distill_lr: Float = Field(2e-4, gt=0, le=10)
    """Adam learning rate of the student."""
    fidelity_steps: Int = Field(800, ge=0, le=10_000_000)
    """Training steps of the fidelity decoder, and of its ablation on the LR latent (0: none;
    the student's images are the VAE's)."""
    fidelity_oracle: Bool = False
    """Also train the fidelity path on the true HR latent and report it (what a perfect SR
    model could add through this VAE)."""
    fidelity_lr: Float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the fidelity decoder."""
    fidelity_width: Int = Field(32, ge=4, le=1024)
    """Channels of the fidelity decoder's path."""
    fidelity_blocks: Int = Field(3, ge=0, le=64)
    """Residual blocks of the fidelity decoder's path."""
    vae_steps: Int = Field(0, ge=0, le=10_000_000)
    """Extra reconstruction fine-tuning of the teacher's VAE before SR training (0: as is)."""
    vae_lr: Float = Field(5e-4, gt=0, le=10)
    """Adam learning rate of that fine-tuning."""
    eval_images: Int = Field(8, ge=1, le=100_000)
    """Held-out crops measured."""
    eval_size: Int = Field(128, ge=16, le=8192)
    """Side of the held-out HR crops."""
    data: str | None = Field(None, min_length=1)
    """Training pairs from a folder instead of the photos: DIV2K's layout (HR/, LR_bicubic/X4/)
    for ``sr``, GoPro's (<sequence>/blur/, <sequence>/sharp/) for ``deblur``."""
    eval_data: str | None = Field(None, min_length=1)
    """Held-out pairs from a folder in the same layout (default: the held-out photos)."""
    data_limit: Int = Field(100, ge=1, le=1_000_000)
    """At most this many pairs read from each folder, by name (a DIV2K pair is ~35 MB in memory)."""
    latency_backend: Literal["torch", "onnxruntime"] = "torch"
    """``torch``: each pipeline timed whole; ``onnxruntime``: the VAE encoder, one U-Net call,
    the VAE decoder and the fidelity decoder exported to ONNX, each timed in ONNX Runtime,
    summed per pipeline (the DDIM update between calls is not timed; extra ``nasframe[onnx]``)."""
    latency_repeats: Int = Field(3, ge=0, le=10_000)
    """Timed runs of each pipeline (0: no latency)."""
    threads: Int | None = Field(None, ge=1, le=1024)
    """Threads of the latency measurement (default: torch's current setting)."""
    seed: Int = Field(0, ge=0)
    """Seed of crops, noise and initialisation."""


# ----------------------------------------------------------------------------- the model
def widen_conv_in(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """``conv`` with ``extra`` more input channels: the old filters on the first inputs,
    zero filters on the new ones, the bias unchanged (the function is preserved)."""
    new = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size,
                    stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :conv.in_channels] = conv.weight
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class SRUNet(nn.Module):
    """A backbone U-Net conditioned on an LR latent by channel concatenation.

    ``forward(sample (B, C, h, w), cond (B, C, h, w), timestep, encoder_hidden_states)``
    returns the backbone's output on ``cat([sample, cond], dim=1)``; the backbone's
    ``conv_in`` is widened by :func:`widen_conv_in` on construction."""

    def __init__(self, backbone: nn.Module, cond_channels: int):
        super().__init__()
        backbone.conv_in = widen_conv_in(backbone.conv_in, cond_channels)
        self.backbone, self.cond_channels = backbone, cond_channels

    def forward(self, sample, cond, timestep, encoder_hidden_states):
        return self.backbone(torch.cat([sample, cond], dim=1), timestep, encoder_hidden_states)


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.nn.functional.silu(self.conv1(torch.nn.functional.silu(x))))


class FidelityDecoder(nn.Module):
    """The VAE decoder with a fidelity path to the LR image (StableSR's controllable feature
    wrapping, reduced to the output): ``image = bicubic + R([h, bicubic])``.

    ``h`` is the frozen VAE decoder's last feature map (full resolution, normalised and
    activated: the input of its ``conv_out``) for the generated latent; ``R`` is a small convolutional path
    (``conv 3x3 -> blocks x residual(SiLU, conv, SiLU, conv) -> conv 3x3``) whose last
    convolution starts at **zero**, so at the start the image is exactly the bicubic
    upsampling and training (L1 to the HR image, on the generated latents of training
    pairs) only adds what the latent and the LR image tell about the detail. Without it
    every image is the VAE's, bounded by its reconstruction PSNR.
    ``forward(latent (unscaled), up (B, 3, H, W) in [0, 1])`` -> (B, 3, H, W) in [0, 1]."""

    def __init__(self, decoder: nn.Module, width: int = 32, blocks: int = 3):
        super().__init__()
        self.decoder = decoder.eval().requires_grad_(False)
        feat = decoder.decoder.conv_out.in_channels
        out = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(nn.Conv2d(feat + 3, width, 3, padding=1),
                                  *[_Residual(width) for _ in range(blocks)], nn.SiLU(), out)

    @torch.no_grad()
    def features(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder's last feature map for an (unscaled) latent: diffusers ``Decoder``'s
        forward up to its ``conv_out`` (whose input this is)."""
        d = self.decoder.decoder
        h = d.conv_in(self.decoder.post_quant_conv(latent))
        h = d.mid_block(h, None)
        for block in d.up_blocks:
            h = block(h, None)
        return d.conv_act(d.conv_norm_out(h))

    def refine(self, features: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return (up + self.head(torch.cat([features, up * 2 - 1], dim=1))).clamp(0, 1)

    def forward(self, latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.refine(self.features(latent), up)


def train_fidelity(fd: FidelityDecoder, features: torch.Tensor, up: torch.Tensor, hr: torch.Tensor,
                   *, steps: int, batch_size: int, lr: float, seed: int, progress=None) -> dict[str, Any]:
    """L1 of ``fd.refine(features, up)`` to ``hr`` (EDSR's loss) on precomputed decoder
    features of the generated latents; only the fidelity path trains."""
    from nasframe_search_spaces.sd_unet.pretrain import _tail, fit

    g = torch.Generator().manual_seed(96_000_019 + seed)
    fd.head.train()

    def loss_fn() -> torch.Tensor:
        idx = _batches(hr.shape[0], batch_size, g)
        return (fd.refine(features[idx], up[idx]) - hr[idx]).abs().mean()

    losses = fit(fd.head.parameters(), loss_fn, steps=steps, lr=lr, description="fidelity decoder",
                 generators=(g,), state=fd.head,
                 progress=progress)
    fd.head.eval()
    return {"steps": steps, "first_loss": _tail(losses[:max(1, len(losses) // 10)]),
            "final_loss": _tail(losses)}


def ddim(steps: int):
    """The sampler: diffusers ``DDIMScheduler`` on the teacher's schedule, ``trailing``
    spacing (the first step at t = 999), eta 0."""
    from diffusers import DDIMScheduler

    from nasframe_search_spaces.sd_unet.pretrain import scheduler

    sch = DDIMScheduler.from_config(scheduler().config, timestep_spacing="trailing",
                                    clip_sample=False, set_alpha_to_one=True)
    sch.set_timesteps(steps)
    return sch


@torch.no_grad()
def sample(model: SRUNet, noise: torch.Tensor, cond: torch.Tensor, ehs: torch.Tensor,
           steps: int) -> torch.Tensor:
    """The N-step model's HR latent (scaled): DDIM from ``noise`` given ``cond``."""
    sch = ddim(steps)
    x, e = noise, ehs.expand(noise.shape[0], -1, -1)
    for t in sch.timesteps:
        x = sch.step(model(x, cond, t, e), t, x).prev_sample
    return x


def one_step(model: SRUNet, noise: torch.Tensor, cond: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
    """The student's HR latent: one call at t = 999, ``x0 = (z - sqrt(1-abar) eps) / sqrt(abar)``."""
    from nasframe_search_spaces.sd_unet.pretrain import scheduler

    abar = scheduler().alphas_cumprod[T_MAX]
    eps = model(noise, cond, torch.full((noise.shape[0],), T_MAX, dtype=torch.long),
                ehs.expand(noise.shape[0], -1, -1))
    return (noise - (1 - abar).sqrt() * eps) / abar.sqrt()


class SRPipeline(nn.Module):
    """Degraded image -> restored image. For SR (LR -> HR): bicubic x ``scale`` (for
    deblurring, ``scale`` 1: the blurred image itself), VAE encoder (LR latent), ``steps`` DDIM
    steps of the SR model from ``noise`` (or the student's one call: ``steps=None``; or no
    model, the LR latent itself: ``steps=0``), then the VAE decoder, or the
    :class:`FidelityDecoder` ``fidelity`` when given.
    ``forward(lr (B, 3, h, w) in [0, 1], noise (B, C, hs/8, ws/8))`` ->
    (B, 3, hs, ws) in [0, 1]. What is evaluated and timed."""

    def __init__(self, encoder: nn.Module, unet: SRUNet | None, decoder: nn.Module, ehs: torch.Tensor,
                 latent_scale: float, scale: int, steps: int | None,
                 fidelity: FidelityDecoder | None = None):
        super().__init__()
        self.encoder, self.unet, self.decoder, self.fidelity = encoder, unet, decoder, fidelity
        self.register_buffer("ehs", ehs)
        self.latent_scale, self.scale, self.steps = latent_scale, scale, steps
        self.channels = encoder.cfg.latent_channels

    def forward(self, lr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from nasframe_search_spaces.sd_unet.srdata import condition_image

        up = condition_image(lr, self.scale)
        cond = self.encoder(up * 2 - 1)[:, :self.channels] * self.latent_scale
        if self.steps == 0:
            x0 = cond
        elif self.steps is None:
            x0 = one_step(self.unet, noise, cond, self.ehs)
        else:
            x0 = sample(self.unet, noise, cond, self.ehs, self.steps)
        if self.fidelity is not None:
            return self.fidelity(x0 / self.latent_scale, up)
        return ((self.decoder(x0 / self.latent_scale) + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------- training
def _batches(n: int, batch: int, g: torch.Generator):
    return torch.randint(0, n, (batch,), generator=g)


def train_sr(model: SRUNet, hr: torch.Tensor, cond: torch.Tensor, ehs: torch.Tensor, *, steps: int,
             batch_size: int, lr: float, seed: int, progress=None) -> dict[str, Any]:
    """Conditional DDPM noise prediction on scaled HR latents ``hr`` given ``cond``
    (both (N, C, h, w)): ``MSE(model(x_t, c, t), eps)``, t uniform over [0, 1000)."""
    from nasframe_search_spaces.sd_unet.pretrain import _tail, fit, scheduler

    sch = scheduler()
    g = torch.Generator().manual_seed(91_000_003 + seed)
    model.train()

    def loss_fn() -> torch.Tensor:
        idx = _batches(hr.shape[0], batch_size, g)
        noise = torch.randn(hr[idx].shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        pred = model(sch.add_noise(hr[idx], noise, t), cond[idx], t, ehs.expand(batch_size, -1, -1))
        return (pred - noise).pow(2).mean()

    losses = fit(model.parameters(), loss_fn, steps=steps, lr=lr, description="SR model",
                 generators=(g,), state=model,
                 progress=progress)
    model.eval()
    return {"steps": steps, "first_loss": _tail(losses[:max(1, len(losses) // 10)]),
            "final_loss": _tail(losses)}


@torch.no_grad()
def teacher_targets(model: SRUNet, cond: torch.Tensor, ehs: torch.Tensor, *, n: int, steps: int,
                    seed: int, batch: int = 16, progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` (noise, LR latent, N-step sample) triples: the student's regression data."""
    g = torch.Generator().manual_seed(92_000_007 + seed)
    idx = torch.randint(0, cond.shape[0], (n,), generator=g)
    c = cond[idx]
    z = torch.randn(c.shape, generator=g)
    task = progress.add_task(f"{steps}-step targets", total=n, info="") if progress is not None else None
    out = []
    for i in range(0, n, batch):
        out.append(sample(model, z[i:i + batch], c[i:i + batch], ehs, steps))
        if task is not None:
            progress.advance(task, len(out[-1]))
    return z, c, torch.cat(out)


def distill(student: SRUNet, z: torch.Tensor, c: torch.Tensor, target: torch.Tensor,
            ehs: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
            progress=None) -> dict[str, Any]:
    """Regression of the one-step student to the N-step samples: ``MSE(one_step(z, c), target)``."""
    from nasframe_search_spaces.sd_unet.pretrain import _tail, fit

    g = torch.Generator().manual_seed(93_000_011 + seed)
    student.train()

    def loss_fn() -> torch.Tensor:
        idx = _batches(z.shape[0], batch_size, g)
        return (one_step(student, z[idx], c[idx], ehs) - target[idx]).pow(2).mean()

    losses = fit(student.parameters(), loss_fn, steps=steps, lr=lr,
                 generators=(g,), state=student,
                 description="one-step student", progress=progress)
    student.eval()
    return {"steps": steps, "first_loss": _tail(losses[:max(1, len(losses) // 10)]),
            "final_loss": _tail(losses)}


# ----------------------------------------------------------------------------- measurement
def image_metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM (scikit-image, data range 1, RGB) of (B, 3, H, W) images in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = pred.detach().permute(0, 2, 3, 1).double().numpy()
    r = ref.detach().permute(0, 2, 3, 1).double().numpy()
    psnr = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(r, p)]
    ssim = [structural_similarity(a, b, data_range=1.0, channel_axis=-1) for a, b in zip(r, p)]
    return {"psnr": float(sum(psnr) / len(psnr)), "ssim": float(sum(ssim) / len(ssim))}


def gmacs(module: nn.Module, inputs: tuple[Any, ...]) -> float:
    """GMACs of one call (the ``gmacs`` objective's fvcore count)."""
    from nasframe_objectives.cost import count_macs

    return count_macs(module, inputs)[0] / 1e9


# ----------------------------------------------------------------------------- cached stages
class SRAdapter:
    """The conditional model of a restoration task (``settings.task``: super-resolution or
    deblurring; "SR model" below stands for either) and its one-step student for one
    backbone: trained once per content hash, then loaded. ``space`` must be prepared
    with its trained teacher. ``arch`` may be None when only the data is used."""

    def __init__(self, space: SDUNetSpace, arch: Architecture | None, ctx: Context,
                 settings: SRParams | dict | None = None, backbone: nn.Module | None = None):
        self.space, self.arch, self.ctx = space, arch, ctx
        self.p = settings if isinstance(settings, SRParams) else SRParams(**(settings or {}))
        tr = space.trained_teacher()
        if tr is None:
            raise ValueError(f"{TASKS[self.p.task]['what']} adaptation needs a trained teacher: "
                             "give the space teacher: {train: {steps: N}} (see docs/sd.md)")
        self.tr = tr
        self._backbone = backbone
        #: the condition's size factor: the SR scale, 1 for deblurring
        self.factor = self.p.scale if self.p.task == "sr" else 1
        self.names = TASKS[self.p.task]
        self.vcfg = space.vae_config
        self.channels = space.config.in_channels
        q = self.vcfg.downsampling * 2 ** (space.config.levels - 1)
        for name in ("hr_size", "eval_size"):
            if getattr(self.p, name) % q:
                raise ValueError(f"SR settings: {name} = {getattr(self.p, name)} must be a multiple "
                                 f"of {q} (VAE x{self.vcfg.downsampling}, then "
                                 f"{space.config.levels} U-Net levels)")

    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            if self.arch is None:
                raise ValueError("no backbone: give an architecture (or a built model)")
            self._backbone = self.space.build(self.arch)
        return self._backbone

    # -- data ------------------------------------------------------------------------
    def _pairs(self, folder: str | None, photos: tuple[str, ...], seed: int):
        from nasframe_search_spaces.sd_unet import srdata

        p = self.p
        if p.task == "deblur":
            if folder is not None:
                return srdata.gopro_pairs(folder, p.data_limit)
            return srdata.photo_blur_pairs(photos, p.blurs_per_image, seed, p.kernel,
                                           p.blur_sigma, p.motion_length)
        if folder is not None:
            return srdata.folder_pairs(folder, p.scale, p.data_limit)
        return srdata.photo_pairs(photos, p.scale)

    def train_pairs(self):
        """(degraded, target) training pairs: (LR, HR) or (blurred, sharp)."""
        from nasframe_search_spaces.sd_unet import pretrain

        return self._pairs(self.p.data, pretrain.TRAIN_PHOTOS, self.p.seed)

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out (degraded, target) crops, fixed by the seed (other blur kernels than
        the training photos')."""
        from nasframe_search_spaces.sd_unet import pretrain, srdata

        pairs = self._pairs(self.p.eval_data, pretrain.HELD_OUT_PHOTOS, self.p.seed + 1_000_003)
        return srdata.fixed_pair_crops(pairs, self.p.eval_images, self.p.eval_size, self.p.seed,
                                       self.factor)

    def condition(self, degraded: torch.Tensor) -> torch.Tensor:
        """The conditioning image (target size) of degraded images."""
        from nasframe_search_spaces.sd_unet.srdata import condition_image

        return condition_image(degraded, self.factor)

    def _data_key(self) -> Any:
        from nasframe_search_spaces.sd_unet import pretrain

        if self.p.data is None:
            return {"photos": list(pretrain.TRAIN_PHOTOS)}
        files = sorted(Path(self.p.data).expanduser().rglob("*"))
        return {"folder": str(Path(self.p.data).expanduser().resolve()), "limit": self.p.data_limit,
                "files": [[str(f.relative_to(Path(self.p.data).expanduser())), f.stat().st_size]
                          for f in files if f.is_file()]}

    # -- the VAE ---------------------------------------------------------------------
    def vae(self) -> dict[str, torch.Tensor]:
        """The teacher's VAE, fine-tuned for ``vae_steps`` more steps when asked (cached)."""
        if not self.p.vae_steps:
            return self.tr["vae"]
        if not hasattr(self, "_vae"):
            from nasframe.distill import module_digest
            from nasframe_search_spaces.sd_unet import pretrain

            train = self.space.params.teacher.train
            payload = {"version": VERSION, "vae": module_digest(self.tr["vae"]),
                       "config": asdict(self.vcfg), "steps": self.p.vae_steps, "lr": self.p.vae_lr,
                       "batch_size": train.batch_size, "crop": train.vae_crop,
                       "kl_weight": train.kl_weight, "seed": self.p.seed}

            def make(path: Path) -> None:
                from safetensors.torch import save_file

                with self.ctx.progress() as progress:
                    state, r = pretrain.train_vae(self.vcfg, steps=self.p.vae_steps,
                                                  batch_size=train.batch_size, crop=train.vae_crop,
                                                  lr=self.p.vae_lr, kl_weight=train.kl_weight,
                                                  seed=self.p.seed, init=self.tr["vae"],
                                                  progress=progress)
                r["latent_scale"] = self._rescaled(state)
                save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                          metadata={"report": json.dumps(r)})

            from safetensors import safe_open
            from safetensors.torch import load_file

            path = self.ctx.cache.get_or_create("sd_unet/sr_vae", payload, make, suffix=".safetensors")
            self._vae = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                self._vae_report = json.loads((f.metadata() or {}).get("report", "{}"))
            if "latent_scale" not in self._vae_report:      # an entry saved without it
                self._vae_report["latent_scale"] = self._rescaled(self._vae)
        return self._vae

    def _rescaled(self, state) -> float:
        """The latent scale of a fine-tuned VAE ``state``: it keeps the latents' magnitude where
        the U-Net learnt it (the teacher's scale times the old latent std / the new one, on
        the same crops)."""
        from nasframe_search_spaces.sd_unet import pretrain

        crops = dict(n=64, image_size=self.p.hr_size, seed=self.p.seed)
        ratio = float(pretrain.latent_pool(self.tr["vae"], self.vcfg, **crops).std()
                      / pretrain.latent_pool(state, self.vcfg, **crops).std())
        return self.tr["latent_scale"] * ratio

    @property
    def latent_scale(self) -> float:
        """The factor that makes the VAE's latents the U-Net's (the teacher's, or, after
        ``vae_steps`` of fine-tuning, rescaled by the change of the latents' std)."""
        if not self.p.vae_steps:
            return self.tr["latent_scale"]
        self.vae()
        return self._vae_report["latent_scale"]

    def encoder(self) -> nn.Module:
        from nasframe_search_spaces.sd_unet.vae import VAEEncoder, inherit_vae

        enc = VAEEncoder(self.vcfg)
        inherit_vae(enc, self.vae())
        return enc.eval().requires_grad_(False)

    def decoder(self) -> nn.Module:
        from nasframe_search_spaces.sd_unet.vae import VAEDecoder, inherit_vae

        dec = VAEDecoder(self.vcfg)
        inherit_vae(dec, self.vae())
        return dec.eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, images01: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """Scaled latents (posterior means x latent_scale) of images in [0, 1]."""
        enc = self.encoder()
        return torch.cat([enc(images01[i:i + batch] * 2 - 1)[:, :self.channels]
                          for i in range(0, len(images01), batch)]) * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 16) -> torch.Tensor:
        dec = self.decoder()
        return torch.cat([((dec(latents[i:i + batch] / self.latent_scale) + 1) / 2).clamp(0, 1)
                          for i in range(0, len(latents), batch)])

    def pool_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``pool`` aligned (LR, HR) training crops, fixed by the seed."""
        from nasframe_search_spaces.sd_unet import srdata

        g = torch.Generator().manual_seed(94_000_013 + self.p.seed)
        return srdata.random_pair_crops(self.train_pairs(), self.p.pool, self.p.hr_size, g,
                                        self.factor)

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled target latents and condition latents (of the bicubic upsampling, or of the
        blurred image) of the pool's crops."""
        if not hasattr(self, "_pool"):
            lr, hr = self.pool_images()
            self._pool = (self.encode(hr), self.encode(self.condition(lr)))
        return self._pool

    # -- the stages ------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        from nasframe.distill import module_digest

        p = self.p.model_dump(include=SR_MODEL_SETTINGS
                              | (DEBLUR_MODEL_SETTINGS if self.p.task != "sr" else set()))
        return {"version": VERSION, "backbone": module_digest(self.backbone),
                "plan": repr(self.space.plan(self.arch)), "vae": module_digest(self.vae()),
                "latent_scale": self.latent_scale, "ehs": module_digest({"ehs": self.tr["ehs"]}),
                "settings": p, "data": self._data_key()}

    def _new_model(self) -> SRUNet:
        import copy

        return SRUNet(copy.deepcopy(self.backbone), self.channels)

    def sr_model(self) -> tuple[SRUNet, dict[str, Any]]:
        """The SR model (trained or loaded) and its training report."""
        if not hasattr(self, "_sr"):
            model = self._new_model()
            made: list[bool] = []

            def make(path: Path) -> None:
                made.append(True)
                start = time.perf_counter()
                hr, cond = self.pool()
                with self.ctx.progress() as progress:
                    r = train_sr(model, hr, cond, self.tr["ehs"], steps=self.p.steps,
                                 batch_size=self.p.batch_size, lr=self.p.lr, seed=self.p.seed,
                                 progress=progress)
                _save(model, path, {**r, "seconds": time.perf_counter() - start})

            path = self.ctx.cache.get_or_create("sd_unet/sr", self._payload(), make, suffix=".safetensors")
            self._sr = (model, _load(model, path, made))
        return self._sr

    def student(self) -> tuple[SRUNet, dict[str, Any]]:
        """The one-step student (trained or loaded) and its report."""
        if not hasattr(self, "_student"):
            from nasframe.distill import module_digest

            teacher, _ = self.sr_model()
            student = self._new_model()
            student.load_state_dict(teacher.state_dict())
            payload = {"version": VERSION, "sr": module_digest(teacher),
                       "sample_steps": self.p.sample_steps, "steps": self.p.distill_steps,
                       "targets": self.p.distill_targets, "lr": self.p.distill_lr,
                       "batch_size": self.p.batch_size, "seed": self.p.seed,
                       "pool": self._payload()["settings"], "data": self._data_key()}

            made: list[bool] = []

            def make(path: Path) -> None:
                made.append(True)
                start = time.perf_counter()
                _, cond = self.pool()
                with self.ctx.progress() as progress:
                    z, c, target = teacher_targets(teacher, cond, self.tr["ehs"],
                                                   n=self.p.distill_targets,
                                                   steps=self.p.sample_steps, seed=self.p.seed,
                                                   progress=progress)
                    r = distill(student, z, c, target, self.tr["ehs"], steps=self.p.distill_steps,
                                batch_size=self.p.batch_size, lr=self.p.distill_lr,
                                seed=self.p.seed, progress=progress)
                _save(student, path, {**r, "seconds": time.perf_counter() - start})

            path = self.ctx.cache.get_or_create("sd_unet/sr_student", payload, make,
                                                suffix=".safetensors")
            self._student = (student, _load(student, path, made))
        return self._student

    def fidelity(self, source: str = "student") -> tuple[FidelityDecoder, dict[str, Any]]:
        """The fidelity decoder (trained or loaded) and its report. ``source``: the latents
        it learns from: ``student`` (the one-step student's, one noise draw per training
        crop), ``lr`` (the LR latent itself, no SR model: the ablation that tells what the
        SR model adds) or ``hr`` (the true HR latent: the oracle, what a perfect SR model
        could add through this VAE)."""
        if source not in ("student", "lr", "hr"):
            raise ValueError(f"fidelity source {source!r}: 'student', 'lr' or 'hr'")
        key = f"_fidelity_{source}"
        if not hasattr(self, key):
            from nasframe.distill import module_digest

            p = self.p
            fd = FidelityDecoder(self.decoder(), p.fidelity_width, p.fidelity_blocks)
            student = self.student()[0] if source == "student" else None
            payload = {"version": VERSION, "source": source,
                       "student": module_digest(student) if student is not None else None,
                       "decoder": module_digest(fd.decoder), "latent_scale": self.latent_scale,
                       "steps": p.fidelity_steps, "lr": p.fidelity_lr, "width": p.fidelity_width,
                       "blocks": p.fidelity_blocks, "batch_size": p.batch_size, "seed": p.seed,
                       "pool": self._payload()["settings"], "data": self._data_key()}
            made: list[bool] = []

            def make(path: Path) -> None:
                made.append(True)
                start = time.perf_counter()
                lr, hr = self.pool_images()
                up = self.condition(lr)
                hr_latents, cond = self.pool()
                with torch.no_grad():
                    if student is None:
                        latents = cond if source == "lr" else hr_latents
                    else:
                        g = torch.Generator().manual_seed(97_000_021 + p.seed)
                        z = torch.randn(cond.shape, generator=g)
                        latents = torch.cat([one_step(student, z[i:i + 16], cond[i:i + 16], self.tr["ehs"])
                                             for i in range(0, len(z), 16)])
                    feats = torch.cat([fd.features(latents[i:i + 16] / self.latent_scale)
                                       for i in range(0, len(latents), 16)])
                with self.ctx.progress() as progress:
                    r = train_fidelity(fd, feats, up, hr, steps=p.fidelity_steps,
                                       batch_size=p.batch_size, lr=p.fidelity_lr, seed=p.seed,
                                       progress=progress)
                _save(fd.head, path, {**r, "seconds": time.perf_counter() - start})

            path = self.ctx.cache.get_or_create(f"sd_unet/sr_fidelity_{source}", payload, make,
                                                suffix=".safetensors")
            setattr(self, key, (fd, _load(fd.head, path, made)))
        return getattr(self, key)

    def pipeline(self, steps: int | None, fidelity: str | None = None) -> SRPipeline:
        """The N-step pipeline (``steps``), the one-step student's (None) or no SR model
        (0: the LR latent); with the fidelity decoder trained on ``fidelity``'s latents
        (``student`` or ``lr``) instead of the VAE decoder when given."""
        unet = (None if steps == 0 else self.sr_model()[0] if steps is not None
                else self.student()[0])
        fd = self.fidelity(fidelity)[0] if fidelity is not None else None
        return SRPipeline(self.encoder(), unet, self.decoder(), self.tr["ehs"],
                          self.latent_scale, self.factor, steps, fd).eval()

    # -- the report ------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """PSNR/SSIM on the held-out crops, GMACs per image, latency; everything trains first."""
        p = self.p
        sr_report = self.sr_model()[1]
        st_report = self.student()[1]
        lr, hr = self.eval_set()
        side = p.eval_size // self.vcfg.downsampling
        noise = torch.randn(len(hr), self.channels, side, side,
                            generator=torch.Generator().manual_seed(95_000_017 + p.seed))
        teacher, student = self.pipeline(p.sample_steps), self.pipeline(None)
        pipes = {"teacher": teacher, "student": student}
        fid_reports = {}
        if p.fidelity_steps:
            pipes["student_fidelity"] = self.pipeline(None, "student")
            pipes["lr_fidelity"] = self.pipeline(0, "lr")
            fid_reports = {f"fidelity_{k}": self.fidelity(k)[1]
                           for k in ("student", "lr", "hr")[:3 if p.fidelity_oracle else 2]}
        out: dict[str, Any] = {}
        with torch.inference_mode():
            up = self.condition(lr)
            # the non-diffusion baseline: bicubic x scale, or the blurred input itself
            out["baseline"] = image_metrics(up, hr)
            if p.task == "sr":
                out["bicubic"] = out["baseline"]
            dec_hr, dec_up = self.decode(self.encode(hr)), self.decode(self.encode(up))
            out["vae_reconstruction"] = image_metrics(dec_hr, hr)
            out["vae_of_bicubic"] = image_metrics(dec_up, hr)
            # what the true HR latent adds to bicubic through this decoder: bicubic plus the
            # decoded difference between the HR latent and the LR latent (an oracle)
            out["oracle_detail"] = image_metrics((up + dec_hr - dec_up).clamp(0, 1), hr)
            if p.fidelity_steps and p.fidelity_oracle:    # the path on the true HR latent
                out["hr_fidelity"] = image_metrics(
                    self.fidelity("hr")[0](self.encode(hr) / self.latent_scale, up), hr)
            preds = {}
            for name, pipe in pipes.items():
                preds[name] = torch.cat([pipe(lr[i:i + 4], noise[i:i + 4]) for i in range(0, len(lr), 4)])
                out[name] = image_metrics(preds[name], hr)
            out["student_vs_teacher"] = image_metrics(preds["student"], preds["teacher"])
        out["teacher"]["steps"], out["student"]["steps"] = p.sample_steps, 1

        # cost per image (batch 1, the held-out size)
        unet = teacher.unet
        x = noise[:1]
        img = hr[:1] * 2 - 1
        t = torch.tensor([T_MAX])
        g_unet = gmacs(unet, (x, x, t, self.tr["ehs"]))
        g_enc = gmacs(teacher.encoder, (img,))
        g_dec = gmacs(teacher.decoder, (x / self.latent_scale,))
        cost = {"unet_step": g_unet, "vae_encoder": g_enc, "vae_decoder": g_dec,
                "teacher_per_image": g_enc + p.sample_steps * g_unet + g_dec,
                "student_per_image": g_enc + g_unet + g_dec,
                "image": [p.eval_size, p.eval_size]}
        cost["reduction"] = cost["teacher_per_image"] / cost["student_per_image"]
        if "student_fidelity" in pipes:
            fd = pipes["student_fidelity"].fidelity
            g_fd = gmacs(fd, (x / self.latent_scale, hr[:1]))
            cost["fidelity_decoder"] = g_fd
            cost["student_fidelity_per_image"] = g_enc + g_unet + g_fd
            cost["lr_fidelity_per_image"] = g_enc + g_fd
        latency: dict[str, Any] = {}
        if p.latency_repeats and p.latency_backend == "onnxruntime":
            latency = self._ort_latency(pipes, lr[:1], noise[:1])
        elif p.latency_repeats:
            from nasframe_objectives.latency import TorchBackend

            backend = TorchBackend({"threads": p.threads, "warmup": 1, "repeats": p.latency_repeats})
            for name, pipe in pipes.items():
                v = backend.measure(pipe, (lr[:1], noise[:1]), self.ctx)
                latency[f"{name}_ms"] = v.value
            latency["speedup"] = latency["teacher_ms"] / latency["student_ms"]
            latency["device"] = backend.device()
        if latency:
            latency["backend"] = p.latency_backend
        n_params = sum(q.numel() for q in unet.parameters())
        return {"task": p.task, "metrics": out, "gmacs": cost, "latency": latency,
                "params_M": n_params / 1e6,
                "training": {"sr": sr_report, "student": st_report, **fid_reports},
                "settings": p.model_dump(), "eval": {"images": len(hr), "hr_size": p.eval_size,
                                                     "source": p.eval_data or (
                                                         "held-out photos" if p.task == "sr" else
                                                         f"held-out photos, {p.kernel} blur")}}


    def _ort_latency(self, pipes: dict[str, SRPipeline], lr: torch.Tensor,
                     noise: torch.Tensor) -> dict[str, Any]:
        """Per-image latency in ONNX Runtime, summed over the exported parts (batch 1)."""
        from nasframe.deploy import export_module
        from nasframe_objectives.ort_backend import OnnxRuntimeBackend
        p, teacher = self.p, pipes["teacher"]
        backend = OnnxRuntimeBackend({"threads": p.threads, "warmup": 1, "repeats": p.latency_repeats})
        up = self.condition(lr)
        latent = noise / self.latent_scale
        parts: dict[str, tuple[nn.Module, tuple[Any, ...]]] = {
            "vae_encoder": (teacher.encoder, (up * 2 - 1,)),
            "unet_step": (teacher.unet, (noise, noise, torch.tensor([T_MAX]), self.tr["ehs"])),
            "vae_decoder": (teacher.decoder, (latent,))}
        if "student_fidelity" in pipes:
            parts["fidelity_decoder"] = (pipes["student_fidelity"].fidelity, (latent, up))
        folder = self.ctx.run_dir / "sr_onnx"
        ms: dict[str, float] = {}
        for name, (module, inputs) in parts.items():
            exported = export_module(module.eval(), inputs, "onnx", folder / f"{name}.onnx",
                                     threads=p.threads)
            ms[name] = backend.measure(module, inputs, self.ctx, exported=exported).value
        enc, unet, dec = ms["vae_encoder"], ms["unet_step"], ms["vae_decoder"]
        out: dict[str, Any] = {"teacher_ms": enc + p.sample_steps * unet + dec,
                               "student_ms": enc + unet + dec}
        if "fidelity_decoder" in ms:
            out["student_fidelity_ms"] = enc + unet + ms["fidelity_decoder"]
            out["lr_fidelity_ms"] = enc + ms["fidelity_decoder"]
        out["speedup"] = out["teacher_ms"] / out["student_ms"]
        out["device"] = f"{backend.device()}, onnxruntime, parts summed"
        out["parts_ms"] = ms
        return out


def _save(model: nn.Module, path: Path, report: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"report": json.dumps(report)})


def _load(model: nn.Module, path: Path, made: list[bool]) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    model.eval()
    with safe_open(str(path), "pt") as f:
        report = json.loads((f.metadata() or {}).get("report", "{}"))
    return {**report, "cached": not made, "path": str(path)}


# ----------------------------------------------------------------------------- entry points
def backbone(target: str | Path, arch: str | None = None, *, quiet: bool = False):
    """``(space, arch, ctx, model, origin)`` from a run directory (its pick, or ``arch``: a
    reference name or a trial number) or an experiment file (``arch``: a reference name,
    default ``sd15``, the space's full model). The space is prepared with its teacher;
    a run's distilled pairs (surrogates included) are loaded from its cache."""
    from nasframe.capabilities import BlockAlignment, Teacher

    target = Path(target)
    run = None
    if target.is_dir():
        from nasframe.results import load_run

        run = load_run(target)
        exp, run_dir = run.experiment(), run.run_dir
    elif target.is_file():
        from nasframe import Experiment

        exp = Experiment.from_yaml(target)
        run_dir = Path(f"{exp.cfg.output or f'runs/{exp.cfg.name}'}-sr")   # not the search's run dir
    else:
        raise ValueError(f"{target}: neither a run directory nor an experiment file")
    space = exp.space
    if getattr(space, "name", None) != "sd_unet":
        raise ValueError(f"{target}: the search space is {space.name!r}; SR adaptation needs sd_unet")
    ctx = exp.context(run_dir, quiet=quiet)
    space.prepare(ctx, frozenset({Teacher, BlockAlignment}))
    refs = space.reference_architectures()
    if arch is None and run is not None:
        if run.pick_result is None:
            raise ValueError(f"{target}: the run has no pick yet; give --arch NAME")
        chosen, origin = run.pick_result.trial.arch, f"pick of {target} ({run.pick_result.rule})"
    elif arch is None or arch in refs:
        name = arch or "sd15"
        chosen, origin = refs[name], f"reference {name}"
    elif run is not None and arch.isdigit():
        chosen, origin = run.architecture(int(arch)), f"trial {arch} of {target}"
    else:
        raise ValueError(f"--arch {arch!r}: not a reference of this space ({', '.join(refs)})"
                         + (" or a trial number" if run is not None else ""))
    model = space.build(chosen)
    distill_steps = next((o.params.get("distill", {}).get("steps", 0) for o in exp.cfg.objectives
                          if o.name == "fidelity" and not o.params.get("part")), 0)
    if distill_steps and not space.plan(chosen).is_full():
        d = next(o.params["distill"] for o in exp.cfg.objectives if o.name == "fidelity"
                 and not o.params.get("part"))
        space.align(model, chosen, ctx, steps=distill_steps, lr=d.get("lr", 1e-3),
                    batch_size=d.get("batch_size", 4), seed=ctx.seed_for(d.get("seed")))
    return space, chosen, ctx, model.eval(), origin


def latent_pairs(space: SDUNetSpace, ctx: Context, settings: SRParams | dict | None = None,
                 *, split: Literal["train", "val"] = "train") -> dict[str, Any]:
    """A task's pair dataset in latent space (``settings.task``: ``deblur`` or ``sr``),
    for other code that trains or measures a conditional latent model.

    ``split="train"``: the training pool (``pool`` aligned random crops of
    ``hr_size``, with flips, fixed by ``seed``); ``"val"``: the held-out crops
    (``eval_images`` of ``eval_size``, other photos and kernels). Returns
    ``target`` (N, C, h, w), the sharp (HR) crops' latents, and ``cond`` (N, C, h, w),
    the latents of the conditioning images (blurred crop, or bicubic upsampling):
    both posterior means x ``latent_scale`` (the U-Net's latent space); ``images``
    (N, 3, H, W) the target crops, ``degraded`` the inputs (blurred, or LR), ``condition``
    the conditioning images (N, 3, H, W), all in [0, 1]; ``ehs`` (1, tokens, D), the
    null text embedding the model is called with; ``latent_scale``; ``task``. ``space``:
    an ``sd_unet`` space prepared with its trained teacher."""
    ad = SRAdapter(space, None, ctx, settings)
    if split == "train":
        degraded, images = ad.pool_images()
        target, cond = ad.pool()
    elif split == "val":
        degraded, images = ad.eval_set()
        target, cond = ad.encode(images), ad.encode(ad.condition(degraded))
    else:
        raise ValueError(f"split {split!r}: 'train' or 'val'")
    return {"task": ad.p.task, "target": target, "cond": cond, "images": images,
            "degraded": degraded, "condition": ad.condition(degraded), "ehs": ad.tr["ehs"],
            "latent_scale": ad.latent_scale}


def conditional_model(space: SDUNetSpace, arch: Architecture, ctx: Context,
                      settings: SRParams | dict | None = None, *, backbone: nn.Module | None = None,
                      trained: bool = True) -> tuple[SRUNet, dict[str, Any]]:
    """The conditional latent denoiser of a task for backbone ``arch`` (``backbone``: its
    built model, e.g. with distilled pairs; default ``space.build(arch)``):
    ``model(x_t, cond, t, encoder_hidden_states)`` -> eps, an :class:`SRUNet` (the
    backbone with ``conv_in`` widened by zero filters). ``trained=True``: trained on
    :func:`latent_pairs`' training pool (or loaded from the run's cache) and its training
    report; ``False``: the untrained widened backbone (computes what the backbone computes)
    and ``{}``."""
    ad = SRAdapter(space, arch, ctx, settings, backbone=backbone)
    if not trained:
        return ad._new_model(), {}
    return ad.sr_model()


def adapt(space: SDUNetSpace, arch: Architecture, ctx: Context, settings: SRParams | dict | None = None,
          *, model: nn.Module | None = None, origin: str = "", out: str | Path | None = None) -> dict[str, Any]:
    """Adaptation to the task (``settings.task``: SR or deblurring) + one-step
    distillation of ``arch`` (trained or loaded), measured; the report (also written
    to ``out`` as JSON when given)."""
    start = time.perf_counter()
    ad = SRAdapter(space, arch, ctx, settings, backbone=model)
    report = {"version": VERSION, "backbone": {"arch": dict(arch), "id": arch.id, "origin": origin,
                                               "preset": space.preset},
              **ad.evaluate(), "seconds": time.perf_counter() - start}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1, default=str))
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a table: PSNR/SSIM, GMACs and latency per image."""
    m, g, lat = r["metrics"], r["gmacs"], r.get("latency", {})
    n = r["settings"]["sample_steps"]
    task = r.get("task", "sr")
    base, deg, tgt = (TASKS[task][k] for k in ("baseline", "degraded", "target"))
    model = "SR model" if task == "sr" else "deblur model"
    rows = [(base, m.get("baseline", m.get("bicubic")), None, None, None),
            (f"VAE reconstruction of {tgt} (ceiling)", m["vae_reconstruction"], None, None, None),
            (f"VAE of {base}", m["vae_of_bicubic"], None, None, None),
            (f"{base} + decoded true {tgt} detail", m.get("oracle_detail"), None, None, None),
            (f"{model}, {n} steps", m["teacher"], n * g["unet_step"], g["teacher_per_image"],
             lat.get("teacher_ms")),
            ("one-step student", m["student"], g["unet_step"], g["student_per_image"],
             lat.get("student_ms")),
            ("one-step student + fidelity decoder", m.get("student_fidelity"), g["unet_step"],
             g.get("student_fidelity_per_image"), lat.get("student_fidelity_ms")),
            (f"fidelity decoder on the {deg} latent", m.get("lr_fidelity"), 0.0,
             g.get("lr_fidelity_per_image"), lat.get("lr_fidelity_ms")),
            (f"fidelity decoder on the {tgt} latent", m.get("hr_fidelity"), None, None, None)]
    lines = [f"{'':36s} {'PSNR dB':>8s} {'SSIM':>6s} {'U-Net GMACs':>11s} {'GMACs/image':>11s} "
             f"{'ms/image':>9s}"]
    for name, v, gu, gm, ms in rows:
        if v is None:
            continue
        lines.append(f"{name:36s} {v['psnr']:8.2f} {v['ssim']:6.3f} "
                     f"{'-' if gu is None else format(gu, '.3f'):>11s} "
                     f"{'-' if gm is None else format(gm, '.3f'):>11s} "
                     f"{'-' if ms is None else format(ms, '.1f'):>9s}")
    e = r["eval"]
    lines.append(f"({e['images']} held-out {e['hr_size']}x{e['hr_size']} crops of {e['source']}; "
                 f"student vs the {n}-step samples: {m['student_vs_teacher']['psnr']:.2f} dB; "
                 f"U-Net {r['params_M']:.2f} M parameters; GMACs per image x{g['reduction']:.1f}"
                 + (f", latency x{lat['speedup']:.1f} ({lat['device']})" if lat else "") + ")")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import sys

    import yaml

    from nasframe.errors import NasframeError
    from nasframe.params import parse_params

    ap = argparse.ArgumentParser(prog="python -m nasframe_search_spaces.sd_unet.sr",
                                 description="SR (or deblurring) adaptation and one-step "
                                             "distillation of an sd_unet backbone (docs/tocsr.md)")
    ap.add_argument("target", help="a run directory (its pick) or an experiment file")
    ap.add_argument("--arch", default=None, help="a reference name (sd15, nanosd, ...) or a trial number")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an SR setting (repeatable), e.g. --set steps=400; see SRParams")
    ap.add_argument("--settings", default=None, help="a YAML file of SR settings")
    ap.add_argument("--task", choices=tuple(TASKS), default=None,
                    help="sr (default) or deblur; the same as --set task=...")
    ap.add_argument("--out", default=None, help="the JSON report (default: RUN_DIR/sr.json, "
                    "RUN_DIR/deblur.json for --task deblur; for an experiment file OUTPUT-sr/...)")
    args = ap.parse_args(argv)
    try:
        raw = yaml.safe_load(Path(args.settings).read_text()) or {} if args.settings else {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: give KEY=VALUE")
            raw[key.strip()] = yaml.safe_load(value)
        if args.task is not None:
            raw["task"] = args.task
        settings = parse_params(SRParams, raw, "SR settings")
        space, arch, ctx, model, origin = backbone(args.target, args.arch)
        out = Path(args.out) if args.out else ctx.run_dir / TASKS[settings.task]["report"]
        report = adapt(space, arch, ctx, settings, model=model, origin=origin, out=out)
    except (ValueError, OSError, KeyError, NasframeError) as err:   # settings, files, data
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
