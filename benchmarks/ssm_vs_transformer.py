"""One SSM block against one transformer block, inference on CPU, in PyTorch eager and in ONNX
Runtime, side by side in one process.

ENS's premise is that an SSM block is cheaper than the transformer block it replaces. This
script measures it at two feature-map shapes of a Restormer-style U-Net (48 x 64 x 64 with 1
head, 96 x 128 x 128 with 2 heads), on two backends:

* **torch**: the modules themselves, eager, ``torch.inference_mode``;
* **ort**: each block exported as ``nasframe export-model`` exports it (dynamo exporter,
  opset 18; the SSM block in the ``export`` form of the scan: plain ONNX ops, no custom op),
  checked against PyTorch, and run by ONNX Runtime's CPU execution provider
  (``ORT_ENABLE_ALL``, spin-waiting off).

Rows (``--variants`` adds the last four):

* ``transformer``: Restormer's block (MDTA + GDFN, FFN expansion 2.66);
* ``ssm``: the hybrid_unet space's SSM block as configured by default: one scan order per
  block (the network rotates the direction block by block), 16 states, expansion 1, FFN
  expansion 1, scan backend ``auto`` (in eager CPU inference: the export form when
  it is faster for the shape, else the fused numba kernel: see ``docs/ens.md``);
* ``ssm, numba scan`` / ``ssm, export form``: the same block with each eager path forced
  (torch only: in ONNX Runtime it is the ``ssm`` row);
* ``ssm, column-major`` (the block's first order reads columns: the export form holds the
  map transposed) and ``ssm, reversed``;
* variants: 2 scan orders; 4 (MambaIR's cross scan), all channels summed; 4 orders each
  over a quarter of the channels; the chunked PyTorch scan (torch only).

The calls are interleaved one by one (each row, each backend, per round: ``--repeats``
calls per round, ``--rounds`` rounds) after warm-up calls, so that drift and other load hit
them alike, in a new random order each time (seeded): a fixed order made the row that always
ran right after the transformer block up to 0.2 slower than the same code in another row. ``--threads`` threads (2 by default) for torch, numba and ORT;
``OMP_WAIT_POLICY=PASSIVE``. Reported per backend: each row's median, its ratio to the
transformer block (median of per-call ratios, each call against the transformer call next
to it, and the ratio of the medians), and the MACs (fvcore; the scan counted by the
recurrence itself, ``B*L*D*(3N+1)``). The MAC ratio is the limit a block can reach if both
ran at the same MACs per second; ``fraction`` = MAC ratio / time ratio says how much of it
is achieved (1: the SSM block runs its MACs as fast as the transformer block runs its own;
above 1: faster). Target: the default SSM block at most 0.5x the transformer block at both
shapes on both backends. The script prints PASS or BELOW TARGET and exits 0 either way: it
is a measurement, not an assertion.

Usage::

    python benchmarks/ssm_vs_transformer.py [--threads 2] [--repeats 10] [--rounds 3]
        [--backends torch,ort] [--variants] [--quick] [--json PATH]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock  # noqa: E402

SHAPES = ((48, 64, 1), (96, 128, 2))  # channels, side, heads (Restormer levels 1 and 2)
TARGET = 0.5
#: rows timed in torch only (their export is the `ssm` row's, or they cannot export)
TORCH_ONLY = ("ssm, numba scan", "ssm, export form", "ssm, chunked PyTorch scan")


def _configs(channels: int, heads: int, variants: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    rows = {"transformer": TransformerBlock(channels, heads),
            "ssm": SSMBlock(channels, orders=1),
            "ssm, numba scan": SSMBlock(channels, orders=1, backend="numba"),
            "ssm, export form": SSMBlock(channels, orders=1, backend="export"),
            "ssm, column-major": SSMBlock(channels, orders=1, first_order=1),
            "ssm, reversed": SSMBlock(channels, orders=1, first_order=2)}
    if variants:
        rows.update({
            "ssm, 2 scan orders": SSMBlock(channels, orders=2),
            "ssm, 4 orders (MambaIR)": SSMBlock(channels, orders=4),
            "ssm, 4 orders, split chans": SSMBlock(channels, orders=4, mix="split"),
            "ssm, chunked PyTorch scan": SSMBlock(channels, orders=1, backend="chunked")})
    return {k: m.eval() for k, m in rows.items()}


def _macs(module: torch.nn.Module, x: torch.Tensor) -> int | None:
    """fvcore's MACs (the scan by its recurrence), or None without fvcore."""
    import warnings

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    try:
        from nasframe_objectives.cost import count_macs
        from nasframe_search_spaces.hybrid_unet.opcount import SCAN_OPS, selective_scan_macs
    except ImportError:
        return None
    try:
        total, _, _ = count_macs(module, (x,), {op: selective_scan_macs for op in SCAN_OPS})
    except Exception:  # noqa: BLE001 - fvcore missing or a trace it cannot count
        return None
    return total


def _ort(module: torch.nn.Module, x: torch.Tensor, folder: Path, name: str, threads: int):
    """The block exported (export form of the scan), checked, in an ORT session."""
    from nasframe.deploy import export_module, ort_session

    res = export_module(module, (x,), "onnx", folder / f"{name}.onnx", threads=threads)
    sess = ort_session(res.path, threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return (lambda: sess.run(None, feed)), res


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="torch,ort", help="torch, ort or both")
    parser.add_argument("--variants", action="store_true",
                        help="also 2 and 4 scan orders and the chunked PyTorch scan")
    parser.add_argument("--quick", action="store_true",
                        help="smallest shape, transformer and ssm rows only, few calls")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = sorted(set(backends) - {"torch", "ort"})
    if bad:
        parser.error(f"unknown backend(s) {', '.join(bad)}; use torch, ort or torch,ort")
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.quick:
        args.repeats, args.rounds = 3, 1
    versions = f"torch {torch.__version__}"
    if "ort" in backends:
        import onnxruntime as ort

        versions += f", onnxruntime {ort.__version__}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{versions}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"load average {load:.2f} at start; median of {args.repeats * args.rounds} "
          "interleaved calls")
    rows, exports = [], []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for channels, side, heads in shapes:
            x = torch.randn(1, channels, side, side)
            blocks = _configs(channels, heads, args.variants)
            if args.quick:   # the two blocks of the target only
                blocks = {k: blocks[k] for k in ("transformer", "ssm")}
            calls: dict[tuple[str, str], object] = {}
            for k, m in blocks.items():
                if "torch" in backends:
                    calls[("torch", k)] = (lambda m=m: m(x))
                if "ort" in backends and k not in TORCH_ONLY:
                    with torch.inference_mode(False), torch.no_grad():
                        run, res = _ort(m, x, Path(tmp), f"{k}-{channels}", args.threads)
                    calls[("ort", k)] = run
                    exports.append({"shape": f"{channels}x{side}x{side}", "block": k,
                                    "max_rel_error": res.max_rel_error, "export_s": res.seconds,
                                    "onnx_nodes": sum(res.ops.values())})
            with torch.inference_mode(False):
                macs = {k: _macs(m, x) for k, m in blocks.items()}
            for f in calls.values():   # warm-up: numba compilation, allocator, caches
                for _ in range(3):
                    f()
            times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
            order, shuffle = list(calls), random.Random(0).shuffle
            for _ in range(args.rounds * args.repeats):
                shuffle(order)   # no row always runs right after another (caches, threads)
                for key in order:
                    f = calls[key]
                    start = time.perf_counter()
                    f()
                    times[key].append((time.perf_counter() - start) * 1e3)
            shape = f"{channels}x{side}x{side}"
            print(f"\n{shape} ({heads} head{'s' if heads > 1 else ''}), "
                  f"load average {os.getloadavg()[0]:.2f}")
            print(f"  {'backend':7s} {'block':28s} {'median ms':>10s} {'paired ratio':>13s} "
                  f"{'ratio of medians':>17s} {'MACs (M)':>9s} {'MAC ratio':>10s} {'fraction':>9s}")
            for backend in backends:
                base_key = (backend, "transformer")
                if base_key not in times:
                    continue
                base_times = times[base_key]
                base = statistics.median(base_times)
                for (b, k), ts in times.items():
                    if b != backend:
                        continue
                    med = statistics.median(ts)
                    paired = statistics.median(t / s for t, s in zip(ts, base_times))
                    mac_ratio = (macs[k] / macs["transformer"]
                                 if macs[k] and macs["transformer"] else None)
                    fraction = mac_ratio / paired if mac_ratio else None
                    rows.append({"shape": shape, "backend": b, "block": k, "median_ms": med,
                                 "ratio": paired, "ratio_of_medians": med / base,
                                 "min_ms": min(ts), "max_ms": max(ts), "macs": macs[k],
                                 "mac_ratio": mac_ratio, "fraction_of_mac_ratio": fraction})
                    mstr = f"{macs[k] / 1e6:9.1f}" if macs[k] else f"{'-':>9s}"
                    rstr = f"{mac_ratio:10.2f}" if mac_ratio else f"{'-':>10s}"
                    fstr = f"{fraction:9.2f}" if fraction else f"{'-':>9s}"
                    print(f"  {b:7s} {k:28s} {med:10.2f} {paired:13.2f} {med / base:17.2f} "
                          f"{mstr} {rstr} {fstr}")
    main_rows = [r for r in rows if r["block"] == "ssm"]
    ok = bool(main_rows) and all(r["ratio"] <= TARGET for r in main_rows)
    ratios = ", ".join(f"{r['backend']} {r['shape']}: {r['ratio']:.2f}" for r in main_rows)
    print(f"\nSSM / transformer ({ratios}); target <= {TARGET}: {'PASS' if ok else 'BELOW TARGET'}")
    if exports:
        worst = max(e["max_rel_error"] for e in exports)
        print(f"exports: {len(exports)}, largest relative error of ORT against PyTorch {worst:.1e}")
    result = {"threads": args.threads, "torch": torch.__version__, "rows": rows,
              "exports": exports, "pass": ok}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
