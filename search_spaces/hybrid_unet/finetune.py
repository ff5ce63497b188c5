"""Short end-to-end fine-tuning of chosen front members of a ``hybrid_unet`` run.

The search scores hybrids assembled from the pre-aligned bank, with no
retraining. Once a model is chosen, a short end-to-end fine-tuning (the whole
hybrid, L1 loss on the task's training crops) usually recovers part of the gap to
the teacher. This tool does it and reports PSNR on the validation images before
and after::

    python -m nasframe_search_spaces.hybrid_unet.finetune RUN_DIR [--members pick] [--steps 300]
                                                 [--lr 0.0001] [--batch-size 8]

(AdamW, a linear warm-up over the first tenth of the steps, then cosine decay:
a fine-tune starts from a working model, so the learning rate is kept low.)

``--members``: ``pick`` (the strategy's pick, the default), ``front`` (every
front member), or trial numbers / architecture ids. Weights go to
``RUN_DIR/finetuned/<id>.pt`` (a state dict: load it with
``torch.load(path, weights_only=True)`` into ``space.build(arch)``) and the
report to ``RUN_DIR/finetuned/report.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nasframe.errors import ConfigError


def _members(run, wanted: list[str]):
    a = run.analysis
    chosen = []
    for w in wanted:
        if w == "pick":
            pick = run.pick_result
            if pick is None:
                raise ConfigError("--members pick: this run's strategy picks no model; "
                                  "name trial numbers or ids, or `front`")
            chosen.append(pick.trial)
        elif w == "front":
            chosen += [t for t, on in zip(a.trials, a.pareto) if on]
        else:
            match = [t for t in a.trials if str(t.number) == w or t.arch.id == w]
            if not match:
                raise ConfigError(f"--members: no finished trial numbered or with id {w!r}")
            chosen.append(match[0])
    seen, out = set(), []
    for t in chosen:
        if t.arch.id not in seen:
            seen.add(t.arch.id)
            out.append(t)
    return out


def finetune_run(run_dir: str | Path, members: list[str] | None = None, steps: int = 300,
                 lr: float = 1e-4, batch_size: int = 8, quiet: bool = False,
                 warmup: int | None = None) -> list[dict]:
    """Fine-tune ``members`` of the run in ``run_dir``; returns one report row per member."""
    from nasframe.candidate import Candidate
    from nasframe.capabilities import TrainedWeights
    from nasframe.results import load_run
    from nasframe_search_spaces.hybrid_unet.align import evaluate_psnr, train_model

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    cfg = run.config_dict
    if cfg["search_space"]["name"] != "hybrid_unet":
        raise ConfigError(f"this run searched {cfg['search_space']['name']!r}; "
                          "fine-tuning is for hybrid_unet runs")
    trials = _members(run, members or ["pick"])
    exp = run.experiment()
    ctx = exp.context(run_dir, quiet=quiet)
    space = exp.space
    space.prepare(ctx, frozenset({TrainedWeights}))   # loads the cached teacher and bank
    pairs = space.validation_pairs()
    out_dir = run_dir / "finetuned"
    out_dir.mkdir(exist_ok=True)
    rows = []
    for t in trials:
        model = Candidate(space, t.arch, t.seed).model
        before = evaluate_psnr(model, pairs)
        start = time.time()
        with ctx.progress() as progress:
            train_model(model, space.data, steps=steps, batch_size=batch_size, lr=lr,
                        progress=progress, description=f"fine-tune {t.arch.id}",
                        step_offset=2_000_000,
                        warmup=steps // 10 if warmup is None else warmup)
        after = evaluate_psnr(model, pairs)
        path = out_dir / f"{t.arch.id}.pt"
        torch.save(model.state_dict(), path)
        rows.append({"trial": t.number, "id": t.arch.id, "psnr_before": before, "psnr_after": after,
                     "improved": after > before,
                     "transformers": space.transformer_count(t.arch), "steps": steps, "lr": lr,
                     "seconds": time.time() - start, "weights": str(path)})
        ctx.log(f"trial {t.number} ({t.arch.id}): PSNR {before:.2f} -> {after:.2f} dB "
                f"after {steps} steps; {path}")
        if after < before:
            ctx.log(f"  fine-tuning lowered the validation PSNR of trial {t.number}; the "
                    "assembled model stays in the run (front/), these weights are saved anyway; "
                    "try a lower --lr or fewer --steps")
    (out_dir / "report.json").write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasframe_search_spaces.hybrid_unet.finetune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--members", nargs="+", default=["pick"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        rows = finetune_run(args.run_dir, args.members, args.steps, args.lr, args.batch_size)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'trial':>5s} {'id':12s} {'transformers':>12s} {'before dB':>9s} {'after dB':>8s}")
    for r in rows:
        print(f"{r['trial']:5d} {r['id']:12s} {r['transformers']:12d} {r['psnr_before']:9.2f} "
              f"{r['psnr_after']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
