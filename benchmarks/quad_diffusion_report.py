"""QUAD on the diffusion U-Net: SR and deblur adapters on one shared quantised one-step U-Net.

In one process (:mod:`nasframe_search_spaces.quad.diffusion`; everything trained is
cached in ``--cache``): sd_unet's ``tiny`` U-Net, adapted for x4 super-resolution
and distilled to one step, is the base both tasks share; each task (``sr``:
bicubic-upsampled LR latent as the condition, ``deblur``: the blurred image's
latent, sd_unet's synthetic motion/Gaussian blur) gets a rank-``--rank`` LoRA adapter on every Linear/Conv2d layer. Then,
at ``--bits`` everywhere (torch fake-quant simulation):

1. **Quality per task** on held-out crops: PSNR (dB) / SSIM of the decoded
   one-step image against the clean crop, and PSNR against the task's fp32 image
   (what quantisation alone costs), for the degraded input, the VAE's
   reconstruction of the clean crop (the ceiling of any decoded latent), the base without an
   adapter, fp32, QUAD (one shared profile + QAT with distillation), the shared
   profile without QAT, separate per-task profiles and the naive shared profile
   (calibrated on the first task only).
2. **Memory** of N tasks (bytes on the device): N merged fp32 models, one fp32
   graph + N fp32 adapters, N merged quantised models with their own encodings
   files (separate profiles), one quantised graph + one encodings file + N int8
   adapters (QUAD; the naive shared profile costs the same).
3. **Export check**: the float graph with A/B as graph inputs in ONNX Runtime,
   fed the first task's adapter, against the merged PyTorch model.

Usage::

    python benchmarks/quad_diffusion_report.py [--rank 4] [--bits w8a16] [--adapter-steps 60]
        [--qat-steps 40] [--sr-steps 100] [--distill-steps 40] [--vae-steps 100]
        [--teacher-steps 30] [--pool 64] [--eval-images 8] [--kernel mixed]
        [--threads 1] [--cache benchmarks/.cache/quad_diffusion] [--json PATH] [--no-export]

It prints its tables and exits 0: a measurement, not an assertion.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe.context import Context  # noqa: E402
from nasframe_search_spaces.quad.diffusion import SR, TEACHER, run  # noqa: E402

ROWS = (("degraded", "degraded input (bicubic / blurred)"),
        ("vae_ceiling", "VAE reconstruction of the clean crop (ceiling)"), ("base", "base, no adapter (fp32)"),
        ("fp32", "fp32 adapters"), ("quad", "QUAD shared profile"),
        ("shared_ptq", "shared profile, no QAT"), ("separate", "separate profiles"),
        ("naive", "naive shared (first task)"))


def settings(args) -> dict:
    return {"tasks": args.tasks, "rank": args.rank, "bits": args.bits, "deblur": {"kernel": args.kernel},
            "teacher": {**TEACHER, "steps": args.teacher_steps, "vae_steps": args.vae_steps},
            "sr": {**SR, "steps": args.sr_steps, "distill_steps": args.distill_steps,
                   "pool": args.pool, "eval_images": args.eval_images},
            "adapters": {"steps": args.adapter_steps, "batch_size": args.batch_size, "lr": 2e-3},
            "qat": {"steps": args.qat_steps, "batch_size": args.batch_size, "lr": args.qat_lr,
                    "calib_batches": args.calib_batches}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["sr", "deblur"], choices=["sr", "deblur"])
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--bits", default="w8a16", choices=["w8a8", "w8a16", "w4a16"])
    ap.add_argument("--kernel", default="mixed", choices=["gaussian", "motion", "mixed"],
                    help="the deblur task's blur kernels (sd_unet's synthetic blur)")
    ap.add_argument("--teacher-steps", type=int, default=TEACHER["steps"])
    ap.add_argument("--vae-steps", type=int, default=TEACHER["vae_steps"])
    ap.add_argument("--sr-steps", type=int, default=SR["steps"])
    ap.add_argument("--distill-steps", type=int, default=SR["distill_steps"])
    ap.add_argument("--pool", type=int, default=SR["pool"], help="training crops (both tasks)")
    ap.add_argument("--eval-images", type=int, default=SR["eval_images"])
    ap.add_argument("--adapter-steps", type=int, default=60)
    ap.add_argument("--qat-steps", type=int, default=40)
    ap.add_argument("--qat-lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "quad_diffusion"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-export", action="store_true", help="skip the ONNX export check")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="quad_diffusion_"))
    ctx = Context(run_dir=work, seed=0, cache_dir=Path(args.cache), quiet=args.quiet)
    load0, t0 = os.getloadavg(), time.time()
    out = run(ctx, settings(args), export=not args.no_export, progress=not args.quiet)
    out.update(args=vars(args), load_avg_start=load0, load_avg_end=os.getloadavg(),
               total_s=time.time() - t0)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def report(out: dict) -> None:
    a, s = out["args"], out["settings"]
    tasks = s["tasks"]
    print(f"\nQUAD on the diffusion U-Net: sd_unet tiny, one-step SR base ({out['base_params'] / 1e6:.2f} M "
          f"parameters), {out['adapted_layers']} adapted layers at rank {s['rank']} "
          f"({out['adapter_params'] / 1e3:.0f} k parameters per task), {s['bits']}; "
          f"{s['sr']['eval_images']} held-out {s['sr']['eval_size']}px crops per task; "
          f"{a['threads']} torch thread(s), load average {out['load_avg_start'][0]:.1f} -> "
          f"{out['load_avg_end'][0]:.1f}, {out['total_s']:.0f} s")
    print("\n1. Quality per task: PSNR (dB) / SSIM against the clean crop, PSNR (dB) against the "
          "task's fp32 image")
    head = " | ".join(f"{t} PSNR | {t} SSIM | {t} vs fp32" for t in tasks)
    print(f"| method | {head} | min PSNR |\n|---|{'---|---|---|' * len(tasks)}---|")
    for key, label in ROWS:
        q = out["quality"][key]
        cells = []
        for t in tasks:
            v = q[t].get("psnr_vs_fp32")
            cells += [f"{q[t]['psnr']:.2f}", f"{q[t]['ssim']:.3f}",
                      "-" if v is None or math.isinf(v) else f"{v:.1f}"]
        print(f"| {label} | {' | '.join(cells)} | {min(q[t]['psnr'] for t in tasks):.2f} |")
    print("\n2. Memory on the device (MB): weights at their bit widths + adapters (int8, a scale per "
          "tensor) + encodings files")
    print("| N tasks | fp32, N merged | fp32, graph + N adapters | separate profiles (N merged + N "
          "encodings) | QUAD (graph + 1 encodings + N adapters) | separate / QUAD |\n"
          "|---|---|---|---|---|---|")
    for n, m in out["memory"].items():
        print(f"| {n} | {m['fp32_separate'] / 1e6:.2f} | {m['fp32_shared'] / 1e6:.2f} | "
              f"{m['separate'] / 1e6:.2f} | {m['quad'] / 1e6:.2f} | {m['separate'] / m['quad']:.1f}x |")
    m = next(iter(out["memory"].values()))
    print(f"(quantised base {m['base_bytes'] / 1e6:.2f} MB, one adapter {m['adapter_bytes'] / 1e6:.3f} MB, "
          f"one AIMET encodings file {m['encodings_bytes'] / 1e6:.2f} MB)")
    d = out["profile_distance"]
    print("per-task profile vs the shared one, scale ratio median / max: "
          + ", ".join(f"{k.split('_')[1]} {v['median']:.2f} / {v['max']:.1f}" for k, v in d.items()))
    if "export_check" in out:
        e = out["export_check"]
        print(f"\n3. ONNX graph with the adapters as inputs ({e['lora_inputs']} lora inputs, "
              f"{e['lora_initializers']} lora initialisers) fed the {e['task']} adapter vs the merged "
              f"PyTorch model: max abs error {e['max_abs_error']:.1e} ({e['max_rel_error']:.1e} relative)")
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in out["seconds"].items()))


if __name__ == "__main__":
    main()
