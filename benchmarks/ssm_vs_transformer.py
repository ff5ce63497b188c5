"""One SSM block against one transformer block, inference on CPU, side by side.

ENS's premise is that an SSM block is cheaper than the transformer block it
replaces. This script measures it, in one process, at two feature-map shapes
of a Restormer-style U-Net (48 x 64 x 64 with 1 head, 96 x 128 x 128 with 2
heads):

* ``transformer``: Restormer's block (MDTA + GDFN, FFN expansion 2.66);
* ``ssm``: the hybrid_unet space's SSM block as configured by default: one
  scan order per block (the network rotates the direction block by block, so it
  sees all four), 16 states, expansion 1, FFN expansion 1, scan backend ``auto``,
  which on CPU inference is the fused numba kernel;
* variants, for context: 2 scan orders, and 4 (MambaIR's cross scan), each over
  all channels with summed outputs; 4 orders each over a quarter of the
  channels; and the default block with the pure-PyTorch chunked
  (state-space-duality) scan instead of the fused kernel.

The configurations are interleaved call by call (one call of each, ``--repeats``
times per round, ``--rounds`` rounds), after warm-up calls (numba compiles on
first use; its cache lives in ``__pycache__``), so that drift and other load hit
them alike: on a shared 2-core VM single conv layers were seen to switch between
a fast and a ~3x slower state from one run to the next. Under
``torch.inference_mode``, ``--threads`` threads (2 by default) for torch and
numba. Reported: each configuration's median, and the ratio to the transformer
block, as the median of the per-call ratios (each SSM call against the
transformer call next to it) and as the ratio of the medians. Target: the default SSM block at most 0.5x the transformer
block at both shapes. The script prints PASS or BELOW TARGET and exits 0 either
way: it is a measurement, not an assertion.

Usage::

    python benchmarks/ssm_vs_transformer.py [--threads 2] [--repeats 15] [--rounds 3]
                                            [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock  # noqa: E402

SHAPES = ((48, 64, 1), (96, 128, 2))  # channels, side, heads (Restormer levels 1 and 2)
TARGET = 0.5


def _configs(channels: int, heads: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "transformer": TransformerBlock(channels, heads),
        "ssm": SSMBlock(channels, orders=1),
        "ssm, 2 scan orders": SSMBlock(channels, orders=2),
        "ssm, 4 orders (MambaIR)": SSMBlock(channels, orders=4),
        "ssm, 4 orders, split chans": SSMBlock(channels, orders=4, mix="split"),
        "ssm, chunked PyTorch scan": SSMBlock(channels, orders=1, backend="chunked"),
    }


def _time(module: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    module(x)
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smallest shape only, few calls")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.quick:
        args.repeats, args.rounds = 3, 1
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"inference_mode, median of {args.repeats * args.rounds} calls")
    rows = []
    with torch.inference_mode():
        for channels, side, heads in shapes:
            x = torch.randn(1, channels, side, side)
            blocks = {k: m.eval() for k, m in _configs(channels, heads).items()}
            for m in blocks.values():  # warm-up: numba compilation, allocator, caches
                for _ in range(3):
                    m(x)
            times: dict[str, list[float]] = {k: [] for k in blocks}
            for _ in range(args.rounds * args.repeats):
                for k, m in blocks.items():
                    times[k].append(_time(m, x))
            base_times = times["transformer"]
            base = statistics.median(base_times)
            shape = f"{channels}x{side}x{side}"
            print(f"\n{shape} ({heads} head{'s' if heads > 1 else ''})")
            print(f"  {'block':28s} {'median ms':>10s} {'paired ratio':>13s} {'ratio of medians':>17s}")
            for k, ts in times.items():
                med = statistics.median(ts)
                paired = statistics.median(t / b for t, b in zip(ts, base_times))
                rows.append({"shape": shape, "block": k, "median_ms": med, "ratio": paired,
                             "ratio_of_medians": med / base, "min_ms": min(ts), "max_ms": max(ts)})
                print(f"  {k:28s} {med:10.2f} {paired:13.2f} {med / base:17.2f}")
    main_rows = [r for r in rows if r["block"] == "ssm"]
    ok = all(r["ratio"] <= TARGET for r in main_rows)
    ratios = ", ".join(f"{r['shape']}: {r['ratio']:.2f}" for r in main_rows)
    print(f"\nSSM / transformer ({ratios}); target <= {TARGET}: {'PASS' if ok else 'BELOW TARGET'}")
    result = {"threads": args.threads, "torch": torch.__version__, "rows": rows, "pass": ok}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
