"""The SSM block on CUDA (chunked scan vs mamba-ssm's fused kernel) beside the CPU, and
the transformer block it replaces: ms per forward (inference) and per training step
(forward + backward), median of ``--repeats`` calls after warm-up. Before timing, every
CUDA backend's output is compared with the chunked scan's on the CPU (max abs diff).

Used by ``benchmarks/gpu_check.sh``; on a machine without CUDA only the CPU rows run.

    python benchmarks/ssm_gpu.py [--shapes 48x64x64,96x128x128] [--repeats 20] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from nasframe_search_spaces.hybrid_unet import scan as sc
from nasframe_search_spaces.hybrid_unet.network import make_block, preset


def _time(fn, sync, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def _rows(shape, device, repeats, cpu_ref):
    c, h, w = shape
    heads = 1 if c <= 48 else 2
    cfg = preset("restormer")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    backends = ["chunked"] + (["numba"] if device == "cpu" and sc.numba_available() else [])
    if device == "cuda":
        backends += ["mamba_ssm"] if sc.mamba_ssm_scan() is not None else []
    torch.manual_seed(0)
    x = torch.randn(1, c, h, w)
    rows = []
    for kind, backend in [("transformer", None)] + [("ssm", b) for b in backends]:
        torch.manual_seed(0)
        block = make_block(kind, c, heads, cfg).to(device)
        if backend is not None:
            block.ssm.backend = backend
        xd = x.to(device)
        row = {"block": kind, "backend": backend or "-", "device": device, "shape": "x".join(map(str, shape))}
        with torch.inference_mode():
            row["infer_ms"] = _time(lambda: block(xd), sync, repeats)
            out = block(xd).float().cpu()
        key = (kind, row["shape"])
        if device == "cpu" and backend in (None, "chunked"):
            cpu_ref[key] = out
        elif key in cpu_ref:
            row["max_abs_diff_vs_cpu"] = float((out - cpu_ref[key]).abs().max())
        if backend != "numba":               # numba has no backward
            xg = xd.clone().requires_grad_(True)

            def step():
                block.zero_grad(set_to_none=True)
                block(xg).square().mean().backward()
            row["train_ms"] = _time(step, sync, max(3, repeats // 2))
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="48x64x64,96x128x128")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cpu_ref: dict = {}
    rows = [r for shape in shapes for d in devices for r in _rows(shape, d, args.repeats, cpu_ref)]
    auto = sc.choose_backend(on_cuda=torch.cuda.is_available(), grad=True)
    print(f"{'shape':>11s} {'block':>11s} {'backend':>9s} {'device':>6s} {'infer ms':>9s} "
          f"{'train ms':>9s} {'vs CPU':>9s}")
    for r in rows:
        diff = f"{r['max_abs_diff_vs_cpu']:.1e}" if "max_abs_diff_vs_cpu" in r else ""
        train = f"{r['train_ms']:9.2f}" if "train_ms" in r else f"{'-':>9s}"
        print(f"{r['shape']:>11s} {r['block']:>11s} {r['backend']:>9s} {r['device']:>6s} "
              f"{r['infer_ms']:9.2f} {train} {diff:>9s}")
    print(f"auto on this machine: {auto[0]} ({auto[1]})")
    result = {"rows": rows, "auto": {"backend": auto[0], "reason": auto[1]},
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
