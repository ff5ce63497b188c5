"""QUAD report: one shared quantised graph + N adapters vs N separate models, side by side.

In one process, on the ``quad`` space (hybrid_unet all-transformer base, tasks
denoise / deblur / derain; trained base and full-precision adapters cached in
``--cache``), for one architecture (every block at ``--rank``, ``--bits``):

1. **Per-task PSNR** (dB, validation photos) of fp32 (the adapter, no
   quantisation), QUAD (one shared profile + QAT with distillation), the shared
   profile without QAT (``shared_ptq``), separate per-task profiles (the
   one-binary-per-task practice) and the naive shared profile (calibrated on
   the first task only) -- torch fake-quant simulation -- plus the QDQ graph
   (the shared profile QUAD trained against, on the graph's tensors) run in ORT.
   **NPU (emulated)**: each quantised method's deployable QDQ graph(s) (QUAD and the
   baselines: shared profile without QAT, separate per-task profiles, naive shared)
   compiled by onnxruntime-qnn for the Hexagon NPU (Snapdragon 8 Elite HTP, emulated on
   x86, CPU fallback off) and run there: PSNR per task as the NPU computes it, and
   the NPU's output against ONNX Runtime's CPU output of the same graph (dB).
2. **Memory**: bytes of N = 3 and 10 tasks: N merged models vs one graph + N
   adapter files, on disk (fp32 ONNX files; int8 QDQ files, adapters int8 with a
   scale per tensor) and as the ``deploy_memory`` model (quantised bytes); ratios.
3. **Latency** in ONNX Runtime (CPU, ``--threads``, spinning off, calls
   interleaved, min and median): merged fp32, adapter graph fp32, merged int8
   QDQ, adapter graph int8 QDQ; ratio fp32 / int8.
4. **Task switch**: feeding another task's adapter to the live session vs a new
   session for another merged model file (+ its first run), and loading an
   adapter file.

Usage::

    python benchmarks/quad_report.py [--preset small] [--base-steps 240] [--adapter-steps 60]
        [--qat-steps 60] [--rank 4] [--bits w8a8] [--size 64] [--threads 1] [--rounds 30]
        [--cache benchmarks/.cache/quad] [--json PATH] [--no-npu] [--npu-tiles N]

It prints its tables and exits 0: a measurement, not an assertion.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe.candidate import Candidate  # noqa: E402
from nasframe.capabilities import MultiTask, TrainedWeights  # noqa: E402
from nasframe.context import Context  # noqa: E402
from nasframe.deploy import export_module, ort_session, qdq_session  # noqa: E402
from nasframe_search_spaces.quad.bundle import (calibration_input, export_bundle, psnr_np,  # noqa: E402
                                               run_tiles, tiles)
from nasframe_search_spaces.quad.deploy import feed, ship_profile  # noqa: E402
from nasframe_search_spaces.quad.lora import LoRANet  # noqa: E402
from nasframe_search_spaces.quad.quant import QuantSim  # noqa: E402
from nasframe_search_spaces.quad.space import METHODS, QuadSpace  # noqa: E402


def make_space(args) -> QuadSpace:
    return QuadSpace(preset=args.preset, granularity="stage", ranks=sorted({0, args.rank, args.full_rank}),
                     bits=[args.bits], outside_rank=args.rank, input_size=args.size,
                     data={"patch": args.patch, "val_size": args.val_size, "short_side": args.short_side},
                     base={"steps": args.base_steps, "batch_size": 6},
                     adapters={"steps": args.adapter_steps, "batch_size": 6},
                     qat={"steps": args.qat_steps, "batch_size": 4, "calib_batches": args.calib_batches})


def int8_adapter_bytes(adapter) -> int:
    """int8 values + one float32 scale per tensor (what a fixed profile ships per task)."""
    return sum(t.numel() + 4 for t in adapter)


def timed(sess, feed_) -> float:
    t = time.perf_counter()
    sess.run(None, feed_)
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["small", "tiny"])
    ap.add_argument("--base-steps", type=int, default=240)
    ap.add_argument("--adapter-steps", type=int, default=60)
    ap.add_argument("--qat-steps", type=int, default=60)
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--full-rank", type=int, default=16, help="rank of the trained fp32 adapters")
    ap.add_argument("--bits", default="w8a8", choices=["w8a8", "w8a16", "w4a16"])
    ap.add_argument("--size", type=int, default=64, help="graph input side")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--short-side", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "quad"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-npu", action="store_true", help="skip the emulated-NPU rows")
    ap.add_argument("--npu-tiles", type=int, default=0,
                    help="validation tiles per task on the emulated NPU (0: all; it is slow)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"args": vars(args), "load_avg_start": os.getloadavg()}
    space = make_space(args)
    work = Path(tempfile.mkdtemp(prefix="quad_report_"))
    ctx = Context(run_dir=work, seed=0, cache_dir=Path(args.cache), quiet=True)
    t0 = time.time()
    space.prepare(ctx, frozenset({TrainedWeights, MultiTask}))
    out["prepare_s"] = time.time() - t0
    arch = space._uniform(args.rank, args.bits)
    model = Candidate(space, arch, seed=0).model
    tasks = space.tasks()

    # 1. PSNR per task and method (torch simulation), then the bundle (ONNX, QDQ in ORT)
    t0 = time.time()
    psnr = {m: space.task_quality(arch, model, ctx, m) for m in METHODS}
    out["quality_s"] = time.time() - t0
    t0 = time.time()
    bundle = export_bundle(space, arch, model, work / "bundle", ctx)
    out["bundle_s"] = time.time() - t0
    out["export_check"] = bundle["graph"]["per_task"]
    out["qdq_vs_float_db"] = bundle["qdq"]["vs_float_db"]
    for t in tasks:
        psnr.setdefault("qdq_ort_tiles", {})[t] = bundle["psnr"][t]["qdq_ort"]
        psnr.setdefault("quad_sim_tiles", {})[t] = bundle["psnr"][t]["quad_sim"]
    out["psnr"] = psnr
    adapters = space.profiles(arch, model, ctx)["adapters"]
    if not args.no_npu:
        t0 = time.time()
        out["npu"] = npu_rows(space, arch, model, ctx, work, args)
        out["npu_s"] = time.time() - t0

    # 2. memory: one merged model per task (fp32 and its own QDQ) vs the shared graph + adapters
    x = torch.rand(1, *space.input_shape, generator=torch.Generator().manual_seed(1))
    merged = {}
    nets = {}
    for t in tasks[:2]:   # two merged models: the files of every task have the same size
        p = work / f"merged_{t}.onnx"
        nets[t] = LoRANet(model.merged(adapters[t]), rank=0)     # no adapter: a plain model
        export_module(nets[t], (x,), "onnx", p, input_names=["x"], threads=1)
        merged[t] = p
    first = tasks[0]
    # the merged model's own QDQ graph: its own profile (the torch simulation, w8a8)
    msim = QuantSim(nets[first], bits=lambda layer: space.bits_of(arch, layer),
                    observe_types=space._sim(arch, model).observe_types)
    mprofile = msim.calibrate([(calibration_input(space.task_data(first), args.size, 60_000 + k), [])
                               for k in range(args.calib_batches)])
    mq = work / f"merged_{first}_qdq.onnx"
    ship_profile(msim, mprofile, merged[first], mq)
    graph, qdq = work / "bundle" / "graph.onnx", work / "bundle" / "graph_qdq.onnx"
    ad_file = work / "bundle" / "adapters" / f"{first}.pt"
    size = {k: os.path.getsize(v) for k, v in {"merged_fp32": merged[first], "merged_int8": mq,
                                                "graph_fp32": graph, "graph_int8": qdq,
                                                "adapter_fp32": ad_file}.items()}
    size["adapter_int8"] = int8_adapter_bytes(adapters[first])
    memory = {}
    for n in (3, 10):
        row = {"separate_fp32": n * size["merged_fp32"], "shared_fp32": size["graph_fp32"] + n * size["adapter_fp32"],
               "separate_int8": n * size["merged_int8"], "shared_int8": size["graph_int8"] + n * size["adapter_int8"]}
        b = space.deploy_bytes(arch, model, n)
        row.update(model_separate=b["separate_bytes"], model_shared=b["shared_bytes"])
        memory[n] = row
    out["file_bytes"], out["memory"] = size, memory

    # 3. latency (interleaved) and 4. task switch
    sessions = {"merged fp32": (ort_session(merged[first], args.threads), {"x": x.numpy()}),
                "graph fp32": (ort_session(graph, args.threads), feed(model, x, adapters[first])),
                "merged int8": (ort_session(mq, args.threads), {"x": x.numpy()}),
                "graph int8": (ort_session(qdq, args.threads), feed(model, x, adapters[first]))}
    times = {k: [] for k in sessions}
    for k, (s, f) in sessions.items():
        for _ in range(3):
            s.run(None, f)
    for _ in range(args.rounds):
        for k, (s, f) in sessions.items():
            times[k].append(timed(s, f))
    out["latency_ms"] = {k: {"min": 1e3 * min(v), "median": 1e3 * statistics.median(v)}
                         for k, v in times.items()}
    live = sessions["graph int8"][0]
    feeds = [feed(model, x, adapters[t]) for t in tasks]
    same, switch, reload, load = [], [], [], []
    other = merged[tasks[1]]
    for r in range(max(args.rounds // 2, 3)):
        same.append(timed(live, feeds[0]))
        switch.append(timed(live, feeds[1 + r % (len(feeds) - 1)] if len(feeds) > 1 else feeds[0]))
        t = time.perf_counter()
        torch.load(ad_file, weights_only=True)
        load.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = ort_session(other, args.threads)
        s.run(None, {"x": x.numpy()})
        reload.append(time.perf_counter() - t)
        del s
    med = lambda v: 1e3 * statistics.median(v)   # noqa: E731
    out["switch_ms"] = {"same_task_run": med(same), "switch_run": med(switch),
                        "adapter_file_load": med(load), "new_session_first_run": med(reload)}
    out["load_avg_end"] = os.getloadavg()
    report(out, tasks)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return out


def npu_rows(space, arch, model, ctx, work: Path, args) -> dict:
    """Every quantised method's deployable QDQ graph(s) on the emulated Hexagon NPU
    (onnxruntime-qnn HTP, CPU fallback off) and in ONNX Runtime on the CPU: PSNR per task
    of each, and the NPU's output against the CPU's (dB)."""
    from nasframe_search_spaces.quad.deploy import htp_session

    tasks = space.tasks()
    prof = space.profiles(arch, model, ctx, baselines=True)
    sim = space._sim(arch, model)
    graph = work / "bundle" / "graph.onnx"
    val = {}
    for t in tasks:
        x, y = tiles(space.task_data(t).validation(), args.size)
        n = args.npu_tiles or len(x)
        val[t] = (x[:n], y[:n])
    profiles = {"shared": prof["shared"], "naive": prof["naive"],
                **{f"separate_{t}": prof["separate"][t] for t in tasks}}
    plans = {"quad": {t: ("shared", prof["adapters"][t]) for t in tasks},
             "shared_ptq": {t: ("shared", model.task_adapters[t]) for t in tasks},
             "separate": {t: (f"separate_{t}", model.task_adapters[t]) for t in tasks},
             "naive": {t: ("naive", model.task_adapters[t]) for t in tasks}}
    sessions, compile_s = {}, {}
    for name, p in profiles.items():
        path = work / f"npu_{name}_qdq.onnx"
        ship_profile(sim, p, graph, path)
        t0 = time.time()
        sessions[name] = (htp_session(path), qdq_session(path, threads=args.threads))
        compile_s[name] = time.time() - t0
    rows: dict = {"compile_s": compile_s, "tiles": {t: len(v[0]) for t, v in val.items()}}
    for method, plan in plans.items():
        for t, (name, adapter) in plan.items():
            npu, cpu = sessions[name]
            one = {t: val[t]}
            got_npu = run_tiles(npu, model, one, {t: adapter})[t]
            got_cpu = run_tiles(cpu, model, one, {t: adapter})[t]
            y = val[t][1].numpy()
            rows.setdefault(method, {})[t] = {
                "npu": float(np.mean([psnr_np(np.clip(g, 0, 1), yy) for g, yy in zip(got_npu, y)])),
                "cpu": float(np.mean([psnr_np(np.clip(g, 0, 1), yy) for g, yy in zip(got_cpu, y)])),
                "npu_vs_cpu": psnr_np(got_npu, got_cpu)}
    return rows


def report(out: dict, tasks) -> None:
    a = out["args"]
    print(f"\nQUAD report: preset {a['preset']}, rank {a['rank']}, {a['bits']}, input {a['size']}px, "
          f"{a['threads']} ORT/torch thread(s); load average {out['load_avg_start'][0]:.1f} -> "
          f"{out['load_avg_end'][0]:.1f}")
    print("\n1. PSNR (dB) per task")
    rows = [("fp32", "fp32"), ("quad", "QUAD shared profile"), ("shared_ptq", "shared profile, no QAT"),
            ("separate", "separate profiles"), ("naive", "naive shared (first task)"),
            ("quad_sim_tiles", "QUAD sim, graph tiles"), ("qdq_ort_tiles", "QDQ graph in ORT, tiles")]
    print(f"| method | {' | '.join(tasks)} | min | mean |\n|---|{'---|' * (len(tasks) + 2)}")
    for key, label in rows:
        v = [out["psnr"][key][t] for t in tasks]
        print(f"| {label} | {' | '.join(f'{x:.2f}' for x in v)} | {min(v):.2f} | {sum(v) / len(v):.2f} |")
    if "npu" in out:
        npu = out["npu"]
        print(f"\n1b. NPU (emulated Snapdragon 8 Elite HTP, onnxruntime-qnn, CPU fallback off): "
              f"PSNR (dB) per task of each method's QDQ graph; {npu['tiles'][tasks[0]]} tiles per task")
        print(f"| method | {' | '.join(tasks)} | min | mean | NPU vs ORT CPU (dB, min) |\n"
              f"|---|{'---|' * (len(tasks) + 3)}")
        for key, label in (("quad", "NPU: QUAD shared profile"), ("shared_ptq", "NPU: shared profile, no QAT"),
                           ("separate", "NPU: separate profiles"), ("naive", "NPU: naive shared")):
            v = [npu[key][t]["npu"] for t in tasks]
            gap = min(npu[key][t]["npu_vs_cpu"] for t in tasks)
            print(f"| {label} | {' | '.join(f'{x:.2f}' for x in v)} | {min(v):.2f} | "
                  f"{sum(v) / len(v):.2f} | {gap:.1f} |")
        v = [npu["quad"][t]["cpu"] for t in tasks]
        print(f"| ORT CPU: QUAD (same tiles) | {' | '.join(f'{x:.2f}' for x in v)} | {min(v):.2f} | "
              f"{sum(v) / len(v):.2f} | |")
        print("compile s: " + ", ".join(f"{k} {v:.1f}" for k, v in npu["compile_s"].items()))
        print("quantisation noise, QUAD's QDQ graph vs the float graph in ORT (dB, all tiles): "
              + ", ".join(f"{t} {v:.1f}" for t, v in out["qdq_vs_float_db"].items()))
    print("\nONNX graph fed each task's adapter vs merged PyTorch, max abs error: "
          + ", ".join(f"{t} {c['max_abs_error']:.1e}" for t, c in out["export_check"].items()))
    print("\n2. Memory (MB): N separate models vs one graph + N adapters")
    print("| N | fp32 files separate | shared | ratio | int8 files separate | shared | ratio | "
          "deploy_memory separate | shared | ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    for n, r in out["memory"].items():
        cells = []
        for s, h in (("separate_fp32", "shared_fp32"), ("separate_int8", "shared_int8"),
                     ("model_separate", "model_shared")):
            cells += [f"{r[s] / 1e6:.2f}", f"{r[h] / 1e6:.2f}", f"{r[s] / r[h]:.1f}x"]
        print(f"| {n} | {' | '.join(cells)} |")
    lat = out["latency_ms"]
    print("\n3. Latency in ONNX Runtime (ms, min / median)")
    print("| graph | fp32 | int8 QDQ | fp32/int8 (median) |\n|---|---|---|---|")
    for g in ("merged", "graph"):
        f, q = lat[f"{g} fp32"], lat[f"{g} int8"]
        print(f"| {'merged (one per task)' if g == 'merged' else 'shared, adapter inputs'} | "
              f"{f['min']:.1f} / {f['median']:.1f} | {q['min']:.1f} / {q['median']:.1f} | "
              f"{f['median'] / q['median']:.2f}x |")
    s = out["switch_ms"]
    print(f"\n4. Task switch (median ms): run same task {s['same_task_run']:.1f}, run after feeding "
          f"another adapter {s['switch_run']:.1f}, load an adapter file {s['adapter_file_load']:.2f}; "
          f"new session for another merged model + first run {s['new_session_first_run']:.1f} "
          f"({s['new_session_first_run'] / max(s['switch_run'] - s['same_task_run'] + s['adapter_file_load'], 1e-3):.0f}x "
          "the switch overhead)")


if __name__ == "__main__":
    main()
