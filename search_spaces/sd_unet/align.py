"""Module-wise surrogates (NanoSD): every changed pair learns to mimic its teacher pair.

A candidate's pair differs from its teacher's when its attention was dropped
(the residual-only variant) or when it was narrowed. Such a pair is trained by
feature-wise distillation (:func:`nasframe.distill.distill`): on the teacher's
own inputs to that pair (sliced to the channels the candidate keeps), it
learns to reproduce the teacher pair's output (at the kept channels), starting
from the weights it inherited. Each trained variant is stored in the run's
cache under a key made of everything that determines it (teacher, pair, kind,
channel subsets, initial weights, training settings), so it is trained once
and reused by every later candidate that contains it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from nasframe_search_spaces.sd_unet.surgery import pair_io

if TYPE_CHECKING:
    from nasframe.context import Context
    from nasframe_search_spaces.sd_unet.network import SDUNet, UNetConfig

VERSION = 1
NAMESPACE = "sd_unet/pairs"


def synthetic_batch(config: UNetConfig, batch: int, latent: int, context: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents ~ N(0, 1), timesteps uniform in [0, 1000), text embeddings ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.in_channels, latent, latent, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ehs = torch.randn(batch, context, config.cross_attention_dim, generator=g)
    return sample, t, ehs


def changed_pairs(model: SDUNet, levels: list) -> dict[str, tuple[Any, Any, str]]:
    """``{module name: (input channels, output channels, kind)}`` of the pairs of
    ``model`` that differ from the teacher's (attention dropped, a surrogate, or narrowed)."""
    plan = model.plan
    out = {}
    for where in ("down", "up"):
        for i, level in plan.stages(where):
            for j, attention in plan.kept(where, i):
                in_idx, out_idx = pair_io(plan, where, i, j, levels)
                kind = (plan.down if where == "down" else plan.up)[i][j]
                dropped = not attention and plan.config.attention[level]
                if dropped or kind == "surrogate" or in_idx is not None or out_idx is not None:
                    out[f"{where}.{i}.pairs.{j}"] = (in_idx, out_idx, kind)
    return out


def _ids(idx: Any) -> list[int] | None:
    return None if idx is None else [int(i) for i in idx]


def align(model: SDUNet, teacher: torch.nn.Module, teacher_digest: str, levels: list,
          ctx: Context, *, steps: int, lr: float, batch_size: int, seed: int, latent: int,
          context: int, batches: Callable[[int], Any] | None = None,
          surrogate_steps: int | None = None) -> dict[str, Any]:
    """Distil (or load from the cache) every changed pair of ``model`` in place.

    Surrogate pairs (:class:`.network.SurrogateBlock`, trained from scratch) take
    ``surrogate_steps`` (default ``steps``); the others, which start from the
    teacher's weights, take ``steps``.

    Returns ``{"pairs": n, "trained": k, "cached": n - k, "seconds": s,
    "relative_mse": {pair: after}, "relative_mse_before": {pair: before}}``
    (relative MSE on a held-out batch; for cached pairs, as measured when trained).
    """
    from nasframe.distill import distill, module_digest

    start = time.perf_counter()
    pairs = changed_pairs(model, levels)
    todo, keys, report = {}, {}, {"pairs": len(pairs), "trained": 0, "cached": 0,
                                   "relative_mse": {}, "relative_mse_before": {}}
    sur_steps = steps if surrogate_steps is None else surrogate_steps
    step_of = {name: (sur_steps if kind == "surrogate" else steps)
               for name, (_, _, kind) in pairs.items()}
    for name, (in_idx, out_idx, kind) in pairs.items():
        module = model.get_submodule(name)
        keys[name] = {"version": VERSION, "teacher": teacher_digest, "pair": name, "kind": kind,
                      "in": _ids(in_idx), "out": _ids(out_idx), "init": module_digest(module),
                      "steps": step_of[name], "lr": lr, "batch_size": batch_size, "seed": seed,
                      "latent": latent, "context": context}
        path = ctx.cache.path(NAMESPACE, keys[name], ".pt")
        if path.exists():
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            result_file = path.with_name(path.stem + ".result.json")
            meta = json.loads(result_file.read_text()) if result_file.exists() else {}
            report["relative_mse"][name] = meta.get("after")
            report["relative_mse_before"][name] = meta.get("before")
            report["cached"] += 1
        else:
            todo[name] = module
    if todo:
        io = {name: pairs[name][:2] for name in todo}
        cfg = model.plan.config

        def inputs_of(name, args, kwargs):
            h, temb, ehs = args
            idx = io[name][0]
            return (h if idx is None else h.index_select(1, idx), temb, ehs)

        def outputs_of(name, output):
            idx = io[name][1]
            return output if idx is None else output.index_select(1, idx)

        if batches is None:
            def batches(step: int):
                return synthetic_batch(cfg, batch_size, latent, context, seed * 100_003 + step + 1)

        for n_steps in sorted({step_of[n] for n in todo}):
            group = {n: m for n, m in todo.items() if step_of[n] == n_steps}
            if n_steps == 0:
                continue
            with ctx.accel.placed(teacher) as placed:   # the experiment's device
                result = distill(placed, group, batches, steps=n_steps, lr=lr, inputs_of=inputs_of,
                                 outputs_of=outputs_of, progress=ctx,
                                 description=f"distilling {len(group)} pair(s)",
                                 device=ctx.accel)
            after, before = result.relative(), result.relative(initial=True)
            for name, module in group.items():
                state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                path = ctx.cache.get_or_create(NAMESPACE, keys[name],
                                               lambda tmp, s=state: torch.save(s, tmp), suffix=".pt")
                path.with_name(path.stem + ".result.json").write_text(
                    json.dumps({"after": after[name], "before": before[name], "steps": n_steps}))
                report["relative_mse"][name] = after[name]
                report["relative_mse_before"][name] = before[name]
        report["trained"] = len(todo)
    model.eval()
    report["seconds"] = time.perf_counter() - start
    return report
