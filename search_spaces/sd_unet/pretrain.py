"""A trained latent-diffusion teacher that fits on a CPU: VAE + U-Net trained on real photos.

A randomly initialised teacher makes a harsh, uninformative fidelity landscape
(its residual branches are as large as the stream they add to). This module
trains a small latent diffusion model in minutes instead, on crops of the
photographs shipped inside scikit-image (no download):

1. **VAE** (diffusers ``AutoencoderKL`` at the preset's config): L1
   reconstruction + ``kl_weight`` x KL on random ``vae_crop`` crops, Adam.
2. **Latents**: a pool of ``pool`` random crops (with flips; side 8 x the
   larger of the space's latent size and ``train.latent_size``) encoded to
   the VAE's posterior mean, scaled by ``1 / std`` of the pool (the
   role of SD's ``scaling_factor``: unit-variance latents; the value is kept as
   ``latent_scale``).
3. **U-Net** (the preset's :class:`.network.SDUNet`): DDPM noise prediction
   (diffusers ``DDPMScheduler``, SD's ``scaled_linear`` betas, 1000 steps) on
   random ``train.latent_size`` crops of the pool's latents (the U-Net is
   convolutional; small crops make training cheap), Adam with a short warm-up. Text conditioning is one
   fixed "null" embedding (seeded N(0, 1) tokens), the same for every image:
   an unconditional model, as classifier-free guidance's empty prompt.

Images ``TRAIN_PHOTOS`` train everything; ``HELD_OUT_PHOTOS`` are never seen
in training (fidelity inputs and super-resolution evaluation use them).

The same code fine-tunes a full-size preset from local weights: pass the
loaded U-Net / VAE state as ``init`` (``teacher.path`` with ``teacher.train``).

:func:`trained_teacher` caches the result in the run's artifact cache under a
hash of everything that determines it (configs, settings, seed, initial
weights), like ``hybrid_unet``'s teacher; ``cache_dir`` in the experiment file
shares it between runs.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasframe.accel import CPU, Accelerator

if TYPE_CHECKING:
    from nasframe.context import Context
    from nasframe_search_spaces.sd_unet.network import UNetConfig
    from nasframe_search_spaces.sd_unet.vae import VAEConfig

VERSION = 1
NAMESPACE = "sd_unet/teacher"
#: RGB photographs in the scikit-image wheel used for training
TRAIN_PHOTOS = ("astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry")
#: never trained on: fidelity inputs and super-resolution evaluation
HELD_OUT_PHOTOS = ("chelsea", "coffee")
PHOTO_SHORT_SIDE = 256


# ----------------------------------------------------------------------------- data
@lru_cache(maxsize=16)
def photo(name: str, short_side: int = PHOTO_SHORT_SIDE) -> torch.Tensor:
    """scikit-image photo ``name`` as (3, H, W) float32 in [0, 1], shorter side
    ``short_side`` (anti-aliased downscale). Cached; do not modify in place."""
    import numpy as np
    from skimage import data
    from skimage.transform import resize
    from skimage.util import img_as_float

    raw = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    img = img_as_float(raw)[..., :3]
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    if scale < 1:
        img = resize(img, (max(round(h * scale), short_side), max(round(w * scale), short_side)),
                     order=1, anti_aliasing=True)
    arr = np.ascontiguousarray(np.clip(img, 0, 1).transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(arr)


def random_crops(names: tuple[str, ...], n: int, size: int, generator: torch.Generator,
                 flips: bool = True) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops (image in [-1, 1]) drawn evenly from photos ``names``."""
    out = []
    for k in range(n):
        img = photo(names[k % len(names)])
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        crop = img[:, top:top + size, left:left + size]
        if flips and bool(torch.randint(0, 2, (1,), generator=generator)):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out) * 2 - 1


def null_embedding(config: UNetConfig, context_length: int, seed: int) -> torch.Tensor:
    """The fixed text embedding of the unconditional teacher: (1, tokens, dim) ~ N(0, 1)."""
    g = torch.Generator().manual_seed(30_000_001 + seed)
    return torch.randn(1, context_length, config.cross_attention_dim, generator=g)


def scheduler():
    """SD's noise schedule (diffusers ``DDPMScheduler``: scaled_linear, 0.00085..0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear")


# ----------------------------------------------------------------------------- training
def _adam(params, lr: float, steps: int):
    opt = torch.optim.Adam(params, lr=lr)
    warm = max(1, steps // 10)
    def factor(s: int) -> float:       # linear warm-up, then cosine decay to a tenth
        cosine = 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
        return min(1.0, (s + 1) / warm) * (0.1 + 0.9 * cosine)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def fit(params, loss_fn, *, steps: int, lr: float, description: str,
        progress=None, generators=(), state=None, accel: Accelerator = CPU) -> list[float]:
    """``steps`` Adam steps (warm-up, cosine decay) on ``loss_fn()``; the losses, one per
    step. ``loss_fn`` draws its own batch, so the random draws keep their order.

    Inside a cached artifact's ``make`` the loop checkpoints itself and resumes after a
    stop (:mod:`nasframe.checkpoint`): ``generators`` are the random generators
    ``loss_fn`` draws from, ``state`` the model (its parameters and buffers are saved;
    default: ``params`` alone). ``loss_fn`` runs under ``accel``'s autocast (its tensors
    are the caller's to place); fp16 scales the loss."""
    from nasframe import checkpoint

    params = list(params)
    opt, sched = _adam(params, lr, steps)
    scaler = accel.grad_scaler()
    losses: list[float] = []
    generators = tuple(generators)
    tensors = list(state.parameters()) + list(state.buffers()) if state is not None else params
    ckpt = checkpoint.loop()
    start = 0
    if ckpt is not None:
        start, extra = ckpt.restore(tensors, opt, sched, generators)
        losses = list(extra.get("losses", []))
    task = progress.add_task(description, total=steps, completed=start, info="") \
        if progress is not None else None
    for step in range(start, steps):
        with accel.autocast():
            loss = loss_fn().float()
        accel.step(loss, opt, scaler)
        sched.step()
        losses.append(float(loss.detach()))
        if task is not None:
            progress.advance(task)
        if ckpt is not None and ckpt.due(force=step + 1 == steps):
            ckpt.save(step + 1, tensors, opt, sched, generators, {"losses": losses})
    return losses


def train_vae(vae_config: VAEConfig, *, steps: int, batch_size: int, crop: int, lr: float,
              kl_weight: float, seed: int, init: Mapping[str, torch.Tensor] | None = None,
              progress=None, accel: Accelerator = CPU) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train (or fine-tune from ``init``) an ``AutoencoderKL`` of ``vae_config`` on photo crops."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config.to_diffusers())
    if init is not None:
        vae.load_state_dict(dict(init))
    vae = accel.to(vae)
    vae.train()
    g = torch.Generator().manual_seed(40_000_003 + seed)

    def loss_fn() -> torch.Tensor:
        x = accel.to(random_crops(TRAIN_PHOTOS, batch_size, crop, g))   # drawn on the CPU
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        return (rec - x).abs().mean() + kl_weight * post.kl().mean() / z[0].numel()

    losses = fit(vae.parameters(), loss_fn, steps=steps, lr=lr, description="teacher VAE",
                 generators=(g,), state=vae,
                 progress=progress, accel=accel)
    state = {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()}
    return state, {"vae_steps": steps, "vae_final_loss": _tail(losses)}


@torch.no_grad()
def encode(vae_state: Mapping[str, torch.Tensor], vae_config: VAEConfig,
           images: torch.Tensor, batch: int = 16, accel: Accelerator = CPU) -> torch.Tensor:
    """The posterior means of ``images`` (in [-1, 1]) under the VAE ``vae_state``
    (unscaled; computed on ``accel``, returned on the CPU)."""
    from nasframe_search_spaces.sd_unet.vae import VAEEncoder, inherit_vae

    enc = VAEEncoder(vae_config)
    inherit_vae(enc, vae_state)
    enc = accel.to(enc).eval()
    out = [accel.host(enc(accel.to(images[i:i + batch]))[:, :vae_config.latent_channels])
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def decode(vae_state: Mapping[str, torch.Tensor], vae_config: VAEConfig,
           latents: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Images in [-1, 1] of unscaled ``latents``."""
    from nasframe_search_spaces.sd_unet.vae import VAEDecoder, inherit_vae

    dec = VAEDecoder(vae_config)
    inherit_vae(dec, vae_state)
    dec.eval()
    return torch.cat([dec(latents[i:i + batch]) for i in range(0, len(latents), batch)])


def latent_pool(vae_state, vae_config: VAEConfig, *, n: int, image_size: int, seed: int,
                photos: tuple[str, ...] = TRAIN_PHOTOS, accel: Accelerator = CPU) -> torch.Tensor:
    """``n`` encoded random crops of ``photos`` (unscaled latents, on the CPU)."""
    g = torch.Generator().manual_seed(50_000_017 + seed)
    return encode(vae_state, vae_config, random_crops(photos, n, image_size, g), accel=accel)


def noised_batch(latents: torch.Tensor, batch_size: int, crop: int | None, sch,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, noise, t)``: a random batch of ``latents`` (random ``crop`` x ``crop`` windows
    when smaller than the latents), DDPM-noised at random timesteps, drawn from ``g``."""
    idx = torch.randint(0, latents.shape[0], (batch_size,), generator=g)
    x0 = latents[idx]
    if crop is not None and crop < x0.shape[-1]:
        top, left = (int(torch.randint(0, x0.shape[-1] - crop + 1, (1,), generator=g))
                     for _ in range(2))
        x0 = x0[..., top:top + crop, left:left + crop]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (batch_size,), generator=g)
    return sch.add_noise(x0, noise, t), noise, t


def train_unet(config: UNetConfig, latents: torch.Tensor, ehs: torch.Tensor, *, steps: int,
               batch_size: int, lr: float, seed: int, init: Mapping[str, torch.Tensor] | None = None,
               progress=None, model: torch.nn.Module | None = None, crop: int | None = None,
               description: str = "teacher U-Net",
               accel: Accelerator = CPU) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train (or fine-tune) the U-Net as a DDPM noise predictor on scaled ``latents``
    (N, C, h, w) with the fixed embedding ``ehs`` (1, tokens, dim), on ``accel`` (the
    batches are drawn on the CPU, then moved; a given ``model`` is left there)."""
    from nasframe_search_spaces.sd_unet.network import SDUNet, UNetPlan

    torch.manual_seed(seed)
    if model is None:
        model = SDUNet(UNetPlan.teacher(config))
        if init is not None:
            model.load_state_dict(dict(init))
    model = accel.to(model)
    model.train()
    ehs = accel.to(ehs)
    sch = scheduler()
    g = torch.Generator().manual_seed(60_000_011 + seed)

    def loss_fn() -> torch.Tensor:
        xt, noise, t = accel.to(noised_batch(latents, batch_size, crop, sch, g))
        pred = model(xt, t, ehs.expand(batch_size, -1, -1))
        return (pred - noise).pow(2).mean()

    losses = fit([p for p in model.parameters() if p.requires_grad], loss_fn, steps=steps,
                 generators=(g,), state=model,
                 lr=lr, description=description, progress=progress, accel=accel)
    model.eval()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, {"steps": steps, "final_mse": _tail(losses)}


def _tail(losses: list[float]) -> float | None:
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail) if tail else None


# ----------------------------------------------------------------------------- the cached teacher
def trained_teacher(config: UNetConfig, vae_config: VAEConfig, train: Mapping[str, Any], ctx: Context,
                    *, seed: int, context_length: int, latent_size: int,
                    unet_init: Mapping[str, torch.Tensor] | None = None,
                    vae_init: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train (or load from the cache) the VAE and U-Net; returns ``{"unet": state,
    "vae": state, "latent_scale": s, "ehs": (1, tokens, dim), "report": {...}}``."""
    from nasframe.distill import module_digest

    train = dict(train)
    payload = {"version": VERSION, "unet": asdict(config), "vae": asdict(vae_config),
               "train": train, "seed": seed, "context_length": context_length,
               "latent_size": latent_size, "photos": list(TRAIN_PHOTOS),
               "unet_init": module_digest(unet_init) if unet_init is not None else None,
               "vae_init": module_digest(vae_init) if vae_init is not None else None}
    report: dict[str, Any] = {}

    def make(path: Path) -> None:
        from safetensors.torch import save_file

        start = time.perf_counter()
        with ctx.progress() as progress:
            vae_state, r1 = train_vae(vae_config, steps=train["vae_steps"],
                                      batch_size=train["batch_size"], crop=train["vae_crop"],
                                      lr=train["vae_lr"], kl_weight=train["kl_weight"], seed=seed,
                                      init=vae_init, progress=progress, accel=ctx.accel)
            side = max(latent_size, train["latent_size"])
            pool = latent_pool(vae_state, vae_config, n=train["pool"],
                               image_size=side * vae_config.downsampling, seed=seed,
                               accel=ctx.accel)
            scale = 1.0 / float(pool.std())
            ehs = null_embedding(config, context_length, seed)
            unet_state, r2 = train_unet(config, pool * scale, ehs, steps=train["steps"],
                                        batch_size=train["batch_size"], lr=train["lr"], seed=seed,
                                        init=unet_init, progress=progress,
                                        crop=train["latent_size"], accel=ctx.accel)
        tensors = {**{f"unet.{k}": v.contiguous() for k, v in unet_state.items()},
                   **{f"vae.{k}": v.contiguous() for k, v in vae_state.items()},
                   "ehs": ehs.contiguous(), "pool": (pool * scale).contiguous()}
        meta = {"latent_scale": scale, **r1, **r2, "seconds": time.perf_counter() - start}
        save_file(tensors, str(path), metadata={"report": json.dumps(meta)})
        report.update(meta)

    path = ctx.cache.get_or_create(NAMESPACE, payload, make, suffix=".safetensors")
    return load_trained(path) | ({"report": {**report, "cached": False, "path": str(path)}} if report
                                 else {})


def load_trained(path: str | Path) -> dict[str, Any]:
    """A teacher saved by :func:`trained_teacher`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    data = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("report", "{}"))
    return {"unet": {k[5:]: v for k, v in data.items() if k.startswith("unet.")},
            "vae": {k[4:]: v for k, v in data.items() if k.startswith("vae.")},
            "ehs": data["ehs"], "pool": data["pool"], "latent_scale": float(meta.get("latent_scale", 1.0)),
            "report": {**meta, "cached": True, "path": str(path)}}


def noised_inputs(latents: torch.Tensor, ehs: torch.Tensor, seed: int,
                  timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``(x_t, t, ehs)`` for scaled ``latents``: DDPM-noised at ``timesteps``
    (default: evenly over [0, 1000))."""
    n = latents.shape[0]
    g = torch.Generator().manual_seed(70_000_009 + seed)
    t = timesteps if timesteps is not None else torch.linspace(0, 999, n).round().long()
    noise = torch.randn(latents.shape, generator=g)
    return scheduler().add_noise(latents, noise, t), t, ehs.expand(n, -1, -1).contiguous()
