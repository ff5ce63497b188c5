"""Alignment: the teacher, and the bank of SSM surrogates distilled from it.

1. **Teacher** (all-transformer network): trained on the task's training pairs
   (L1 loss, AdamW, cosine schedule, random crops), or loaded from a state dict
   at a path the user gives (``torch.load(..., weights_only=True)``): this
   network's state dict, or a published Restormer checkpoint (``{"params": ...}``,
   its module names renamed: :mod:`.weights`).
2. **Surrogates**: for every block position, an SSM block distilled to reproduce
   the teacher block's output from the teacher's own input at that block
   (feature MSE, :func:`nasframe.distill.distill`). One teacher pass per step
   trains them all.
3. **Stitching** (``distill.stitch.steps`` > 0): the surrogates trained further
   inside the teacher, a random subset swapped in per step, on the network's
   output against the teacher's (:func:`nasframe.distill.stitch`): a block-wise
   feature error says little about what a block's error does to the image
   (derain at dim 48: the last decoder block's surrogate has one of the lowest
   feature errors and costs 2 dB alone).

The result, a :class:`Bank`, assembles any hybrid with no retraining: the
teacher's weights everywhere, the surrogate's in each SSM slot. Both steps
are cached by a hash of everything that determines them (configuration, data,
steps, seed), so a second run, a resumed run or a worker process loads them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nasframe.distill import distill_cached, module_digest, stitch_cached
from nasframe import checkpoint
from nasframe.accel import CPU, Accelerator
from nasframe_search_spaces.hybrid_unet.data import RestorationData, psnr
from nasframe_search_spaces.hybrid_unet.network import HybridRestormer, UNetConfig, make_block
from nasframe_search_spaces.hybrid_unet.weights import (check_fits, is_published, read_state,
                                                       to_network_keys)

ALIGN_VERSION = 1


@dataclass
class Bank:
    """Pre-aligned components: the teacher's state dict and one SSM block state per position."""

    teacher: dict[str, torch.Tensor]
    ssm: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def state_for(self, model: HybridRestormer) -> dict[str, torch.Tensor]:
        """The state dict that turns ``model`` (any hybrid) into the aligned hybrid."""
        state = {}
        ssm_prefixes = []
        for stage, kinds in model.kinds.items():
            for i, kind in enumerate(kinds):
                if kind == "ssm":
                    name = model.block_name(stage, i)
                    ssm_prefixes.append(name + ".")
                    state.update({f"{name}.{k}": v for k, v in self.ssm[name].items()})
        state.update({k: v for k, v in self.teacher.items()
                      if not any(k.startswith(p) for p in ssm_prefixes)})
        return state


def all_kinds(cfg: UNetConfig, kind: str) -> dict[str, list[str]]:
    from nasframe_search_spaces.hybrid_unet.network import STAGES

    return {s: [kind] * cfg.stage_blocks(s) for s in STAGES}


def evaluate_psnr(model: torch.nn.Module, pairs, max_images: int | None = None,
                  accel: Accelerator = CPU) -> float:
    """Mean PSNR (dB, peak 1) of ``model``'s clamped outputs over validation pairs, the
    model run on ``accel`` (and left there)."""
    model = accel.to(model).eval()
    values = []
    with torch.inference_mode():
        for inp, target in pairs[:max_images]:
            with accel.autocast():
                out = model(accel.to(inp))
            values.append(psnr(accel.host(out).clamp(0, 1), target))
    return float(sum(values) / len(values))


def train_model(model: torch.nn.Module, data: RestorationData, *, steps: int, batch_size: int,
                lr: float, progress=None, description: str = "training",
                step_offset: int = 0, warmup: int = 0, on_step=None,
                accel: Accelerator = CPU) -> list[float]:
    """Train ``model`` to restore ``data``'s training crops (L1 loss, AdamW, ``warmup``
    steps of linear warm-up, then cosine decay to 1% of ``lr``); returns the loss curve.
    The model trains on ``accel`` (moved there, and left there) at its precision.
    ``on_step(k)`` runs after step ``k`` (1-based; the model in eval mode meanwhile) and
    may raise to stop the training."""
    model = accel.to(model)
    scaler = accel.grad_scaler()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.999))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses = []
    # inside a cached artifact's make: checkpoint, and resume after a stop (nasframe.checkpoint)
    ckpt = checkpoint.loop()
    tensors = list(model.parameters()) + list(model.buffers())
    start = 0
    if ckpt is not None:
        start, extra = ckpt.restore(tensors, opt, sched)
        losses = list(extra.get("losses", []))
    task = progress.add_task(description, total=steps, completed=start, info="") \
        if progress is not None else None
    for step in range(start, steps):
        inp, target = accel.to(data.train_batch(batch_size, step_offset + step))
        with accel.autocast():
            loss = F.l1_loss(model(inp).float(), target)
        accel.step(loss, opt, scaler, clip=1.0)
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            recent = sum(losses[-20:]) / len(losses[-20:])
            progress.update(task, advance=1, info=f"L1 {recent:.4f}")
        if ckpt is not None and ckpt.due(force=step + 1 == steps):
            ckpt.save(step + 1, tensors, opt, sched, extra={"losses": losses})
        if on_step is not None:
            model.eval()
            try:
                on_step(step + 1)
            finally:
                model.train()
    model.eval()
    return losses


def prepare_teacher(cfg: UNetConfig, data: RestorationData, ctx, teacher: dict[str, Any]) -> tuple[
        HybridRestormer, dict[str, Any]]:
    """The trained (or loaded) all-transformer network and a report."""
    model = HybridRestormer(cfg, all_kinds(cfg, "transformer"))
    weights = teacher.get("weights")
    if weights:
        raw = read_state(weights)
        state = to_network_keys(raw)
        check_fits(state, cfg, repr(str(weights)))
        model.load_state_dict(state)       # strict: check_fits saw every key and shape
        model.eval()
        return model, {"source": str(weights),
                       "layout": "restormer" if is_published(raw) else "network",
                       "norm": "WithBias" if cfg.norm_bias else "BiasFree"}
    payload = {"version": ALIGN_VERSION, "config": cfg.to_dict(), "data": data.describe(),
               "steps": teacher["steps"], "batch_size": teacher["batch_size"], "lr": teacher["lr"],
               "seed": teacher["seed"]}

    report: dict[str, Any] = {}

    def make(path: Path) -> None:
        torch.manual_seed(teacher["seed"])
        fresh = HybridRestormer(cfg, all_kinds(cfg, "transformer"))
        start = time.time()
        with ctx.progress() as progress:
            losses = train_model(fresh, data, steps=teacher["steps"], batch_size=teacher["batch_size"],
                                 lr=teacher["lr"], progress=progress, description="teacher",
                                 accel=ctx.accel)
        torch.save({k: v.cpu() for k, v in fresh.state_dict().items()}, path)
        report.update(seconds=time.time() - start, final_l1=sum(losses[-20:]) / max(len(losses[-20:]), 1))

    path = ctx.cache.get_or_create("hybrid_unet/teacher", payload, make, suffix=".pt")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    report.update(source="trained", cache=str(path), cached=not report)
    return model, report


def prepare_surrogates(cfg: UNetConfig, teacher_model: HybridRestormer, data: RestorationData,
                       ctx, params: dict[str, Any]) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                            dict[str, Any]]:
    """One distilled SSM block per block position of the teacher (which is moved to the
    context's device, with the students)."""
    teacher_model = ctx.accel.to(teacher_model)
    torch.manual_seed(params["seed"])
    students = {}
    for position, (stage, i) in enumerate(cfg.slots()):
        students[HybridRestormer.block_name(stage, i)] = make_block(
            "ssm", cfg.stage_channels(stage), cfg.stage_heads(stage), cfg, position)
    payload = {"version": ALIGN_VERSION, "teacher": module_digest(teacher_model),
               "config": cfg.to_dict(), "data": data.describe(), "batch_size": params["batch_size"],
               "seed": params["seed"]}
    bs = params["batch_size"]

    def batches(step: int):
        # teacher inputs: degraded crops, disjoint in step from the teacher's own training batches
        return data.train_batch(bs, 1_000_000 + step)[0]

    with ctx.progress() as progress:
        result = distill_cached(ctx.cache, "hybrid_unet/surrogates", payload, teacher_model, students,
                                batches, steps=params["steps"], lr=params["lr"], progress=progress,
                                description="surrogates", device=ctx.accel)
    rel = result.relative()
    rel0 = result.relative(initial=True)
    report = {"cached": result.cached, "seconds": result.seconds, "steps": result.steps,
              "relative_mse": rel, "relative_mse_untrained": rel0}
    stitch = params.get("stitch") or {}
    if stitch.get("steps", 0) > 0:
        with ctx.progress() as progress:
            stitched = stitch_cached(
                ctx.cache, "hybrid_unet/stitched", {**payload, "stitch_data": "train+2000000"},
                teacher_model, students, lambda step: data.train_batch(bs, 2_000_000 + step)[0],
                steps=stitch["steps"], lr=stitch["lr"], loss=stitch["loss"], seed=params["seed"],
                progress=progress, description="stitching", device=ctx.accel)
        report["stitch"] = {"cached": stitched.cached, "seconds": stitched.seconds,
                            "steps": stitched.steps, "lr": stitch["lr"], "loss": stitch["loss"],
                            "output_error": stitched.errors,
                            "output_error_before": stitched.initial_errors}
    bank = {name: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
            for name, m in students.items()}
    return bank, report


def write_report(ctx, report: dict[str, Any]) -> Path:
    path = Path(ctx.run_dir) / "alignment.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    return path
