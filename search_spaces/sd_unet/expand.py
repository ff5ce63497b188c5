"""The 16-channel expansion: a 4-channel latent diffusion model widened to a 16-channel latent.

TOC-SR starts from a sixteen-channel latent model made from a four-channel
one. The rule used here (function-preserving at the start, then briefly
re-aligned):

* **The latent.** The old 4-channel latent is channels 0-3 of the new one;
  channels 4-15 are new.
* **VAE encoder** (``encoder.conv_out`` -> ``2L`` moments, ``quant_conv``
  ``2L -> 2L``): the old mean rows go to rows 0-3, the old log-variance rows to
  rows 16-19 (``AutoencoderKL`` splits the moments into mean = first ``L``,
  log-variance = last ``L``); ``quant_conv`` keeps the old 8x8 block at the
  matching rows/columns and is the identity on the new channels. The new
  moment rows keep ``AutoencoderKL``'s fresh initialisation (seeded).
* **VAE decoder**: ``post_quant_conv`` keeps the old 4x4 block and is the
  identity on the new channels; ``decoder.conv_in`` takes the old filters on
  input channels 0-3 and **zero** filters on 4-15. So the expanded VAE decodes
  exactly what the old one decoded, whatever the new channels hold.
* **U-Net**: ``conv_in`` takes the old filters on input channels 0-3 and zero
  filters on 4-15 (every feature starts identical to the old model's);
  ``conv_out`` keeps the old filters and biases for output channels 0-3 and
  starts at zero for 4-15. Every other tensor is copied unchanged.

Right after the transfer, on channels 0-3 the expanded model computes exactly
what the 4-channel model computes (a test checks it). **Re-alignment**: the
VAE trains briefly on reconstruction with the old latent distilled into
channels 0-3 (``MSE(mean16[:, :4], mean4)``), then the U-Net trains on the new
16-channel latents with ``MSE(eps16[:, :4], eps4(x_t[:, :4]))`` (feature-wise
distillation from the 4-channel teacher on the inherited channels) plus the
denoising loss on channels 4-15 (the new channels have no teacher).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from nasframe.context import Context
    from nasframe_search_spaces.sd_unet.network import UNetConfig
    from nasframe_search_spaces.sd_unet.vae import VAEConfig

VERSION = 1
NAMESPACE = "sd_unet/expanded"
#: the 16-channel presets and the 4-channel presets they are expanded from
EXPANDS_FROM = {"tiny16": "tiny", "latent16": "sd15"}


def expand_unet(state4: Mapping[str, torch.Tensor], config16: UNetConfig) -> dict[str, torch.Tensor]:
    """The 4-channel U-Net state widened to ``config16``'s latent channels (the rule above)."""
    out = {k: v.clone() for k, v in state4.items()}
    c_old = state4["conv_in.weight"].shape[1]
    w = state4["conv_in.weight"]
    new = torch.zeros(w.shape[0], config16.in_channels, *w.shape[2:], dtype=w.dtype)
    new[:, :c_old] = w
    out["conv_in.weight"] = new
    w, b = state4["conv_out.weight"], state4["conv_out.bias"]
    neww = torch.zeros(config16.out_channels, *w.shape[1:], dtype=w.dtype)
    newb = torch.zeros(config16.out_channels, dtype=b.dtype)
    neww[:c_old], newb[:c_old] = w, b
    out["conv_out.weight"], out["conv_out.bias"] = neww, newb
    return out


def expand_vae(state4: Mapping[str, torch.Tensor], config16: VAEConfig,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """The 4-channel ``AutoencoderKL`` state widened to ``config16.latent_channels``."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoencoderKL(**config16.to_diffusers()).state_dict()
    out = {k: (v.clone() if fresh[k].shape == v.shape else v) for k, v in state4.items()}
    lo, ln = state4["post_quant_conv.weight"].shape[0], config16.latent_channels
    rows = list(range(lo)) + list(range(ln, ln + lo))          # old mean, old log-variance

    w, b = fresh["encoder.conv_out.weight"].clone(), fresh["encoder.conv_out.bias"].clone()
    w[rows], b[rows] = state4["encoder.conv_out.weight"], state4["encoder.conv_out.bias"]
    out["encoder.conv_out.weight"], out["encoder.conv_out.bias"] = w, b

    q = torch.eye(2 * ln)[:, :, None, None].clone()
    qb = torch.zeros(2 * ln)
    r = torch.tensor(rows)
    q[r[:, None], r[None, :]] = state4["quant_conv.weight"]
    qb[r] = state4["quant_conv.bias"]
    out["quant_conv.weight"], out["quant_conv.bias"] = q, qb

    p = torch.eye(ln)[:, :, None, None].clone()
    pb = torch.zeros(ln)
    p[:lo, :lo], pb[:lo] = state4["post_quant_conv.weight"], state4["post_quant_conv.bias"]
    out["post_quant_conv.weight"], out["post_quant_conv.bias"] = p, pb

    w = state4["decoder.conv_in.weight"]
    neww = torch.zeros(w.shape[0], ln, *w.shape[2:], dtype=w.dtype)
    neww[:, :lo] = w
    out["decoder.conv_in.weight"] = neww
    return out


def realign_vae(vae16: Mapping[str, torch.Tensor], vae4: Mapping[str, torch.Tensor],
                config16: VAEConfig, config4: VAEConfig, *, steps: int, batch_size: int, crop: int,
                lr: float, kl_weight: float, seed: int, progress=None) -> tuple[dict, dict]:
    """Reconstruction + the old latent distilled into channels 0-3."""
    from diffusers import AutoencoderKL

    from nasframe_search_spaces.sd_unet.pretrain import TRAIN_PHOTOS, _tail, fit, random_crops

    vae = AutoencoderKL(**config16.to_diffusers())
    vae.load_state_dict(dict(vae16))
    old = AutoencoderKL(**config4.to_diffusers())
    old.load_state_dict(dict(vae4))
    old.eval().requires_grad_(False)
    vae.train()
    g = torch.Generator().manual_seed(41_000_003 + seed)
    lo = config4.latent_channels

    def loss_fn() -> torch.Tensor:
        x = random_crops(TRAIN_PHOTOS, batch_size, crop, g)
        post = vae.encode(x).latent_dist
        with torch.no_grad():
            target = old.encode(x).latent_dist.mean
        rec = vae.decode(post.sample(generator=g)).sample
        return ((rec - x).abs().mean() + (post.mean[:, :lo] - target).pow(2).mean()
                + kl_weight * post.kl().mean() / post.mean[0].numel())

    losses = fit(vae.parameters(), loss_fn, steps=steps, lr=lr, description="expanded VAE",
                 generators=(g,), state=vae,
                 progress=progress)
    return ({k: v.detach().clone() for k, v in vae.state_dict().items()},
            {"vae_realign_steps": steps, "vae_realign_loss": _tail(losses)})


def realign_unet(unet16: Mapping[str, torch.Tensor], unet4: Mapping[str, torch.Tensor],
                 config16: UNetConfig, config4: UNetConfig, latents: torch.Tensor,
                 ehs: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
                 crop: int | None = None, progress=None) -> tuple[dict, dict]:
    """Distillation from the 4-channel U-Net on channels 0-3, denoising on 4-15."""
    from nasframe_search_spaces.sd_unet.network import SDUNet, UNetPlan
    from nasframe_search_spaces.sd_unet.pretrain import _tail, fit, noised_batch, scheduler

    torch.manual_seed(seed)
    model = SDUNet(UNetPlan.teacher(config16))
    model.load_state_dict(dict(unet16))
    old = SDUNet(UNetPlan.teacher(config4))
    old.load_state_dict(dict(unet4))
    old.eval().requires_grad_(False)
    model.train()
    lo = config4.in_channels
    sch = scheduler()
    g = torch.Generator().manual_seed(61_000_007 + seed)

    def loss_fn() -> torch.Tensor:
        xt, noise, t = noised_batch(latents, batch_size, crop, sch, g)
        e = ehs.expand(batch_size, -1, -1)
        with torch.no_grad():
            target = old(xt[:, :lo], t, e)
        pred = model(xt, t, e)
        return (pred[:, :lo] - target).pow(2).mean() + (pred[:, lo:] - noise[:, lo:]).pow(2).mean()

    losses = fit(model.parameters(), loss_fn, steps=steps, lr=lr, description="expanded U-Net",
                 generators=(g,), state=model,
                 progress=progress)
    model.eval()
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {"realign_steps": steps, "realign_loss": _tail(losses)})


def expanded_teacher(base: dict[str, Any], config4: UNetConfig, vae4: VAEConfig,
                     config16: UNetConfig, vae16: VAEConfig, train: Mapping[str, Any], ctx: Context,
                     *, seed: int, latent_size: int) -> dict[str, Any]:
    """Expand the 4-channel teacher ``base`` (from :func:`.pretrain.trained_teacher`) and
    re-align it (``train.expand_steps`` U-Net steps, ``train.expand_vae_steps`` VAE steps);
    cached like the base. Same keys as the base."""
    import json
    from pathlib import Path

    from nasframe.distill import module_digest
    from nasframe_search_spaces.sd_unet.pretrain import latent_pool, load_trained

    train = dict(train)
    payload = {"version": VERSION, "base_unet": module_digest(base["unet"]),
               "base_vae": module_digest(base["vae"]), "unet16": asdict(config16),
               "vae16": asdict(vae16), "train": train, "seed": seed, "latent_size": latent_size}
    report: dict[str, Any] = {}

    def make(path: Path) -> None:
        from safetensors.torch import save_file

        start = time.perf_counter()
        with ctx.progress() as progress:
            v16, r1 = realign_vae(expand_vae(base["vae"], vae16, seed), base["vae"], vae16, vae4,
                                  steps=train["expand_vae_steps"], batch_size=train["batch_size"],
                                  crop=train["vae_crop"], lr=train["vae_lr"],
                                  kl_weight=train["kl_weight"], seed=seed, progress=progress)
            side = max(latent_size, train["latent_size"])
            pool = latent_pool(v16, vae16, n=train["pool"], image_size=side * vae16.downsampling,
                               seed=seed)
            # channels 0-3 keep the base's scale (they are distilled to the old latent)
            scale = base["latent_scale"]
            u16, r2 = realign_unet(expand_unet(base["unet"], config16), base["unet"], config16,
                                   config4, pool * scale, base["ehs"],
                                   steps=train["expand_steps"], batch_size=train["batch_size"],
                                   lr=train["lr"], seed=seed, crop=train["latent_size"],
                                   progress=progress)
        tensors = {**{f"unet.{k}": v.contiguous() for k, v in u16.items()},
                   **{f"vae.{k}": v.contiguous() for k, v in v16.items()},
                   "ehs": base["ehs"].contiguous(), "pool": (pool * scale).contiguous()}
        meta = {"latent_scale": scale, "expanded_from": base.get("report", {}).get("path"),
                **r1, **r2, "seconds": time.perf_counter() - start}
        save_file(tensors, str(path), metadata={"report": json.dumps(meta)})
        report.update(meta)

    path = ctx.cache.get_or_create(NAMESPACE, payload, make, suffix=".safetensors")
    out = load_trained(path)
    if report:
        out["report"] = {**report, "cached": False, "path": str(path)}
    return out
