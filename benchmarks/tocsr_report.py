"""TOC-SR report: the searched backbone against the expanded 16-channel model it came from.

Reads a finished run of ``examples/tocsr.yaml`` (or of any ``sd_unet`` run:
``sd_eps_bo``, ``nanosd_family``) and prints, side by side in this process:

1. **Reductions** (the paper: 6.6x parameters, 2.8x GMACs): the teacher (the
   reference ``sd15`` of the run, i.e. the full expanded model) against the
   strategy's pick and the best feasible model of every fidelity bound:
   U-Net parameters (M), GMACs of one step, fidelity (dB), and the ratios
   teacher / model.
2. **Latency per image** of one U-Net step, teacher and pick, measured here
   (calls interleaved, median of ``--repeats``, batch 1, ``--threads``
   threads), and the ratio.
3. **The teacher**: how it was trained (from the cache's metadata: seconds,
   final losses) and the VAE's reconstruction PSNR on crops of the held-out
   photos (the ceiling of any image made through this VAE).

Usage::

    python benchmarks/tocsr_report.py RUN_DIR [RUN_DIR ...] [--repeats 5] [--threads 2]
                                      [--json PATH] [--sr SR_JSON] [--deblur DEBLUR_JSON]

4. **Super-resolution** (when ``RUN_DIR/sr.json`` exists, written by
   ``python -m nasframe_search_spaces.sd_unet.sr RUN_DIR``, or with ``--sr
   PATH``): PSNR/SSIM on held-out images of bicubic, the VAE's reconstruction
   of the HR image (the ceiling of anything decoded by it), the N-step SR model,
   the one-step student, the student with the fidelity decoder and that path on
   the LR latent (the ablation; on the HR latent too when it was trained), with
   GMACs and latency per image.

5. **Deblurring** (when ``RUN_DIR/deblur.json`` exists, written by ``python -m
   nasframe_search_spaces.sd_unet.sr RUN_DIR --task deblur``, or with ``--deblur
   PATH``): the same table for the same backbone adapted to deblurring, against
   the blurred input (and the fidelity path on the blurred latent: the ablation).

It prints its tables and exits 0: a measurement, not an assertion.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path


def _fmt(v, spec=".3f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def reductions(run) -> tuple[list[dict], dict | None]:
    """Rows: the teacher, the pick, the best feasible per bound."""
    rows = [r for r in run.rows() if r["status"] == "complete"]
    teacher = next((r for r in rows if r["origin"] == "reference:sd15"), None)
    pick = run.pick_result
    out = []
    if teacher is not None:
        out.append({"model": "expanded teacher" if run.config.search_space.params.get("preset", "").endswith("16")
                    else "teacher", **{k: teacher.get(k) for k in ("id", "params", "gmacs", "fidelity")}})
    strat = run.config.strategy.params
    for eps in strat.get("epsilons", []):
        ok = [r for r in rows if r.get("fidelity") is not None and r["fidelity"] >= eps]
        if ok:
            best = min(ok, key=lambda r: r["gmacs"])
            out.append({"model": f"best, fidelity >= {eps} dB", "origin": best["origin"],
                        **{k: best.get(k) for k in ("id", "params", "gmacs", "fidelity")}})
    if pick is not None:
        t = pick.trial
        out.append({"model": "pick", "id": t.arch.id, "origin": t.origin,
                    **{k: t.values.get(k) for k in ("params", "gmacs", "fidelity")}})
    if teacher is not None:
        for r in out:
            for k in ("params", "gmacs"):
                if r.get(k) and teacher.get(k):
                    r[f"{k}_reduction"] = teacher[k] / r[k]
    front = run.analysis
    n_front = int(sum(bool(p) for p in front.pareto))
    return out, {"front": n_front, "trials": len(rows),
                 "pick_rule": pick.rule if pick is not None else None}


def latency(run, ids: list[str], repeats: int, threads: int) -> dict[str, float]:
    import torch

    from nasframe.capabilities import Teacher

    torch.set_num_threads(threads)
    exp = run.experiment()
    space = exp.space
    ctx = exp.context(run.run_dir, quiet=True)
    space.prepare(ctx, frozenset({Teacher}))
    archs = {t.arch.id: t.arch for t in run.trial_list()}
    models = {i: space.build(archs[i]).eval() for i in ids}
    inputs = space.example_inputs(archs[ids[0]], batch_size=1)
    times: dict[str, list[float]] = {i: [] for i in ids}
    with torch.inference_mode():
        for m in models.values():
            m(*inputs)
        for _ in range(repeats):
            for i, m in models.items():
                start = time.perf_counter()
                m(*inputs)
                times[i].append(time.perf_counter() - start)
    return {i: 1000 * statistics.median(v) for i, v in times.items()}, space


def teacher_summary(space) -> dict:
    import torch

    from nasframe_search_spaces.sd_unet import pretrain

    tr = space.trained_teacher()
    if tr is None:
        return {"trained": False}
    g = torch.Generator().manual_seed(0)
    images = pretrain.random_crops(pretrain.HELD_OUT_PHOTOS, 8, 64, g)
    rec = pretrain.decode(tr["vae"], space.vae_config, pretrain.encode(tr["vae"], space.vae_config, images))
    mse = float((((rec.clamp(-1, 1) + 1) / 2 - (images + 1) / 2) ** 2).mean())
    rep = {k: v for k, v in tr["report"].items() if k != "path"}
    return {"trained": True, "vae_psnr_held_out": -10 * math.log10(mse), **rep}


def sr_summary(run_dir, sr_path=None, task: str = "sr") -> dict | None:
    """Print the table of ``RUN_DIR/sr.json`` (``task`` deblur: ``deblur.json``), or of
    ``sr_path``; the report, or None."""
    name, what = {"sr": ("sr.json", "super-resolution"), "deblur": ("deblur.json", "deblurring")}[task]
    path = Path(sr_path) if sr_path else Path(run_dir) / name
    if not path.is_file():
        flag = "" if task == "sr" else " --task deblur"
        print(f"{what}: no report at {path} (python -m nasframe_search_spaces.sd_unet.sr "
              f"{run_dir or 'RUN_DIR'}{flag} writes it)")
        return None
    from nasframe_search_spaces.sd_unet.sr import format_report

    report = json.loads(path.read_text())
    b = report["backbone"]
    if report.get("task", "sr") == "sr":
        print(f"super-resolution x{report['settings']['scale']} of {b['origin']} ({path}):")
    else:
        print(f"deblurring ({report['eval']['source']}) of {b['origin']} ({path}):")
    print(format_report(report))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sr", default=None, help="an SR report (default: RUN_DIR/sr.json)")
    ap.add_argument("--deblur", default=None, help="a deblurring report (default: RUN_DIR/deblur.json)")
    args = ap.parse_args(argv)
    from nasframe.results import load_run

    if args.runs is None:
        args.runs = [] if args.sr or args.deblur else ["runs/tocsr"]
    doc = {}
    for run_dir in args.runs:
        run = load_run(run_dir)
        rows, info = reductions(run)
        print(f"\n== {run_dir}: {info['trials']} trials, {info['front']} on the front; "
              f"pick: {info['pick_rule']}")
        ids = [r["id"] for r in rows if r["model"] in ("teacher", "expanded teacher", "pick")]
        lat, space = latency(run, ids, args.repeats, args.threads) if ids else ({}, None)
        print(f"{'model':28s} {'params M':>9s} {'GMACs':>7s} {'fidelity dB':>11s} "
              f"{'params x':>8s} {'GMACs x':>8s} {'ms/step':>8s}")
        for r in rows:
            r["ms"] = lat.get(r["id"])
            print(f"{r['model']:28s} {_fmt(r.get('params'), '9.3f')} {_fmt(r.get('gmacs'), '7.3f')} "
                  f"{_fmt(r.get('fidelity'), '11.1f')} {_fmt(r.get('params_reduction'), '7.2f')}x "
                  f"{_fmt(r.get('gmacs_reduction'), '7.2f')}x {_fmt(r['ms'], '8.1f')}")
        teacher = teacher_summary(space) if space is not None else {}
        if teacher.get("trained"):
            print(f"teacher: trained ({'cached' if teacher.get('cached') else 'now'}; "
                  f"{_fmt(teacher.get('seconds'), '.0f')} s to train), U-Net final MSE "
                  f"{_fmt(teacher.get('final_mse'))}, VAE PSNR on held-out crops "
                  f"{_fmt(teacher.get('vae_psnr_held_out'), '.2f')} dB")
        sr = sr_summary(run_dir, args.sr)
        deblur = sr_summary(run_dir, args.deblur, "deblur")
        doc[str(run_dir)] = {"rows": rows, **info, "teacher": teacher, "sr": sr, "deblur": deblur}
    if not args.runs and args.sr:
        doc["sr"] = sr_summary(None, args.sr)
    if not args.runs and args.deblur:
        doc["deblur"] = sr_summary(None, args.deblur, "deblur")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
