"""Multi-fidelity pruning on ENS: the same search with and without a pruner, side by side.

The ENS search (``hybrid_unet``, PSNR after a short fine-tuning against the
transformer count) runs once without a pruner and once per pruner, in one
process, with the same seed, strategy and budget; the teacher and the
pre-aligned bank are trained once and shared through a cache folder. Each
candidate is the hybrid assembled from the bank, fine-tuned end to end for
``--steps`` steps (``finetuned_psnr``, PSNR reported every ``--every`` steps).

Printed per run: fine-tuning steps spent (the sum over trials of the steps each
ran), their fraction of the unpruned run's, trials pruned, the front size and
the hypervolume of the complete trials (one reference point for every run:
transformer count = slots + 1, PSNR = the lowest final PSNR of any run - 0.5 dB),
and its ratio to the unpruned run's. Target: a pruner reaches the same front
(hypervolume within 1 %) at <= 50 % of the fine-tuning steps.

Usage::

    python benchmarks/pruning.py [--trials 24] [--steps 40] [--every 5] [--strategy random]
                                 [--pruners asha median] [--json PATH] [--out DIR]

With ``--strategy random`` every run evaluates the same architectures in the same
order (the proposals do not depend on the values), so the runs differ only by
what the pruner stopped; ``ens`` (NSGA-II) also learns from the pruned trials'
partial values.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

PRUNERS = {
    "asha": {"name": "asha", "params": {"min_resource": 20, "reduction_factor": 3,
                                        "no_worse_on": ["transformer_count"]}},
    "median": {"name": "median", "params": {"n_startup_trials": 4, "n_warmup_steps": 20,
                                            "no_worse_on": ["transformer_count"]}},
    "hyperband": {"name": "hyperband", "params": {"min_resource": 20, "reduction_factor": 3,
                                                  "no_worse_on": ["transformer_count"]}},
    "median-global": {"name": "median", "params": {"n_startup_trials": 4,
                                                   "n_warmup_steps": 20}},
}


def experiment(args, pruner: dict | None, cache: Path) -> dict:
    doc = {
        "name": "pruning_bench", "seed": args.seed,
        "search_space": {"name": "hybrid_unet", "params": {
            "preset": "tiny", "granularity": "block", "task": "denoise", "input_size": 32,
            "data": {"sigma": 25, "patch": 32, "val_size": 64},
            "teacher": {"steps": args.teacher_steps, "batch_size": 8, "lr": 0.002},
            "distill": {"steps": args.distill_steps, "batch_size": 8, "lr": 0.002}}},
        "objectives": [
            {"name": "finetuned_psnr", "params": {"steps": args.steps, "eval_every": args.every,
                                                  "max_images": 2}},
            {"name": "transformer_count"}],
        "strategy": {"name": args.strategy, **({"params": {"population": 8}}
                                                if args.strategy == "ens" else {})},
        "budget": {"trials": args.trials},
        "references": False,
        "cache_dir": str(cache),
    }
    if pruner is not None:
        doc["pruner"] = pruner
    return doc


def pruner_for(label: str, args) -> dict:
    """The pruner section for ``label``: the first check is the first report after the start
    (``--every`` steps: ASHA/Hyperband's first rung, the median pruner's warm-up), so the
    pruners fit any ``--steps``."""
    doc = json.loads(json.dumps(PRUNERS[label]))
    if label in ("asha", "hyperband"):
        doc["params"]["min_resource"] = args.every
    elif label.startswith("median"):
        doc["params"]["n_warmup_steps"] = args.every
    return doc


def _same_finished_run(run_dir: Path, doc: dict, trials: int) -> bool:
    """``run_dir`` holds this very experiment, finished (``--reuse``)."""
    import nasframe

    if not (run_dir / "trials.db").is_file():
        return False
    try:
        run = nasframe.load_run(run_dir)
    except Exception:  # noqa: BLE001 - anything else is a run to redo
        return False
    cfg = run.config.model_dump(mode="json")
    same = all(json.dumps(cfg.get(k), sort_keys=True) == json.dumps(
        nasframe.Experiment.from_dict(doc).cfg.model_dump(mode="json").get(k), sort_keys=True)
        for k in ("search_space", "objectives", "strategy", "pruner", "seed"))
    done = [t for t in run.trial_list() if t.status in ("complete", "infeasible", "pruned")]
    return same and len(done) >= trials


def summarise(run) -> dict:
    trials = [t for t in run.trial_list() if not t.is_reference]
    steps = sum(int((t.intermediate or {}).get("steps", 0)) for t in trials)
    done = [t for t in trials if t.status in ("complete", "infeasible")]
    return {"trials": len(trials), "pruned": sum(t.status == "pruned" for t in trials),
            "steps": steps,
            "points": [(t.values["transformer_count"], t.values["finetuned_psnr"]) for t in done]}


def hypervolume(points, ref) -> tuple[float, int]:
    import numpy as np

    from nasframe.pareto import hypervolume as hv
    from nasframe.pareto import pareto_ranks

    if not points:
        return 0.0, 0
    v = np.array(points, dtype=float)
    dirs = ["min", "max"]
    front = pareto_ranks(v, dirs, np.ones(len(v), bool)) == 0
    return float(hv(v[front], dirs, np.array([ref[0], -ref[1]]))), int(front.sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--strategy", default="random", choices=("random", "ens"))
    ap.add_argument("--pruners", nargs="+", default=["asha", "median"], choices=sorted(PRUNERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/.cache/pruning")
    ap.add_argument("--json")
    ap.add_argument("--reuse", action="store_true",
                    help="read a run again where --out already holds the same finished "
                         "experiment (e.g. the unpruned baseline) instead of running it")
    args = ap.parse_args(argv)

    import torch

    import nasframe

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out = Path(args.out)
    cache = out / "cache"
    results = {}
    for label in ["none", *args.pruners]:
        run_dir = out / label
        pruner = None if label == "none" else pruner_for(label, args)
        doc = experiment(args, pruner, cache)
        reused = args.reuse and _same_finished_run(run_dir, doc, args.trials)
        if reused:                    # the same experiment, finished before: read it again
            run = nasframe.load_run(run_dir)
            trials = run.trial_list()
            seconds = max(t.finished for t in trials) - min(t.started for t in trials)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            exp = nasframe.Experiment.from_dict(doc)
            t0 = time.time()
            run = exp.run(out=run_dir, quiet=True)
            seconds = time.time() - t0
        results[label] = {**summarise(run), "seconds": seconds}
        print(f"{label}: {results[label]['trials']} trials, {results[label]['pruned']} pruned, "
              f"{results[label]['steps']} steps, {results[label]['seconds']:.0f} s"
              + (" (reused: the same finished run)" if reused else ""), flush=True)
    slots = max(p[0] for r in results.values() for p in r["points"]) if any(
        r["points"] for r in results.values()) else 0
    low = min((p[1] for r in results.values() for p in r["points"]), default=0.0)
    ref = (slots + 1, low - 0.5)
    base_steps = results["none"]["steps"] or 1
    base_hv, _ = hypervolume(results["none"]["points"], ref)
    load = os.getloadavg()[0]
    print(f"\nENS pruning benchmark: hybrid_unet tiny (block), {args.strategy}, {args.trials} "
          f"trials, finetuned_psnr {args.steps} steps (every {args.every}); load {load:.1f}")
    print(f"{'pruner':15s} {'steps':>7s} {'of none':>8s} {'pruned':>7s} {'front':>6s} "
          f"{'HV':>9s} {'HV/none':>8s} {'seconds':>8s}")
    rows = []
    for label, r in results.items():
        h, n_front = hypervolume(r["points"], ref)
        row = {"pruner": label, "steps": r["steps"], "steps_fraction": r["steps"] / base_steps,
               "pruned": r["pruned"], "front": n_front, "hypervolume": h,
               "hv_ratio": h / base_hv if base_hv else float("nan"), "seconds": r["seconds"]}
        rows.append(row)
        verdict = ""
        if label != "none":
            ok = row["steps_fraction"] <= 0.5 and row["hv_ratio"] >= 0.99
            verdict = "  PASS" if ok else "  BELOW TARGET"
        print(f"{label:15s} {r['steps']:7d} {row['steps_fraction']:8.2f} {r['pruned']:7d} "
              f"{n_front:6d} {h:9.4f} {row['hv_ratio']:8.3f} {r['seconds']:8.0f}{verdict}")
    print(f"(reference point: transformers {ref[0]}, PSNR {ref[1]:.2f} dB; target: steps <= 0.50 "
          "of none with HV/none >= 0.99)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows,
                                               "reference_point": ref, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
