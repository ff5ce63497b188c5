"""From PyTorch to a deployable graph: torch eager vs ONNX Runtime, side by side in one process.

Sections (each model exported with :func:`nasframe.deploy.export_module`, the
way ``nasframe export-model`` and the ``onnxruntime`` latency backend do it:
dynamo exporter, checked against PyTorch on the same input):

1. **ENS networks** (``hybrid_unet``, ``--preset``, ``--side`` x ``--side``):
   the all-transformer teacher, two hybrids (SSM blocks in the encoder and
   latent; SSM blocks at full resolution) and all-SSM. PyTorch runs the SSM
   blocks with its own CPU path (``auto``: the fused numba scan); ONNX Runtime
   runs the exported graph (the ``export`` scan, plain tensor ops).
2. **NanoSD family** (``sd_unet``, ``--sd-preset``): the U-Net of each
   reference architecture (SD 1.5 teacher, BK-SDM base/small/tiny, NanoSD), and
   NanoSD's ``vae_encoder``, ``vae_decoder`` and one-step ``pipeline``.
3. **Blocks**: one SSM block (the space's default: 1 scan order, 16 states)
   against one Restormer transformer block at 48x64x64 (1 head) and 96x128x128
   (2 heads), in ONNX Runtime and in torch. Goal: SSM <= 0.5x the transformer.

With ``--executorch`` (the default when the package is installed) every row of sections 1-3
also runs as an ExecuTorch program on its XNNPACK backend (as the ``executorch`` latency
backend makes it: ``torch.export`` of the export form, lowered with the XNNPACK partitioner,
run in ExecuTorch's runtime with ``--threads`` threads), interleaved with the other two and
checked against PyTorch; the row shows its median, ET / torch and how many graph nodes
XNNPACK took against those left on ExecuTorch's portable kernels. Section 4 then has a third
measured latency, ``latency_et``, for hybrid_unet.

Every row: export time, max relative error of ONNX Runtime against PyTorch,
torch eager and ONNX Runtime medians (p10-p90) and ORT / torch. Calls are
interleaved (one torch call, one ORT call, per round) after warm-up, so drift
and other load hit both alike. torch: ``inference_mode``, ``--threads``
threads, ``OMP_WAIT_POLICY=PASSIVE`` (set before torch loads; OpenMP's spinning
makes a shared machine's numbers meaningless). ORT: CPU execution provider,
``ORT_ENABLE_ALL``, ``--threads`` intra-op threads, spin-waiting off.

4. **Proxies vs measured** (``--proxy-spaces``: ``--proxy-trials`` random
   ``hybrid_unet`` architectures at block granularity, ``--preset``,
   ``--proxy-side``; and random valid ``sd_unet`` U-Nets, ``--sd-preset``;
   untrained weights: latency does not depend on them): a real experiment per
   space run through the Python API with the objectives ``params``, ``gmacs``,
   ``transformer_count``, ``latency_lut`` (hybrid_unet; block table timed on
   ``--lut-backend``, ORT by default) and ``latency`` measured on two backends
   (torch eager and ONNX Runtime). Printed: Kendall tau of every proxy
   against each measured latency (``nasframe analyse``'s table) and the LUT's
   prediction error against the ORT measurement on every trial (and on its own
   check architectures).

5. **NPU** (``--sections npu``; needs ``onnxruntime-qnn``): every export path compiled
   for the Hexagon NPU of ``--soc`` (ONNX Runtime's QNN EP, HTP backend emulated on this
   CPU, CPU fallback off; :mod:`nasframe_objectives.qnn_htp`): hybrid_unet's teacher, two
   hybrids and all-SSM for each of ``--npu-presets`` at ``--npu-side``, the sd_unet
   U-Nets and VAE parts, conv_denoiser. Per model: compiles, the refused nodes by op type,
   compile seconds, the emulated fp16 output against fp32 (PSNR, max abs error).
6. **NPU profile** (``--sections npu_profile``): do the HTP emulator's profiling cycles
   estimate device time? The same compiled graphs profiled ``--npu-repeats`` times
   (``profiling_level detailed``): the spread of the reported accelerator cycles between
   identical runs, and their ratio to this CPU's wall time of the run.

``TABLE_HOOKS``: functions ``(args) -> (title, rows) | None`` appended to the
report (more tables from elsewhere); empty here.

Usage::

    python benchmarks/deploy_report.py [--preset small] [--side 256] [--sd-preset tiny]
        [--threads 2] [--repeats 10] [--warmup 2] [--sections ens,sd,blocks,proxies]
        [--proxy-trials 24] [--proxy-side 128] [--[no-]executorch] [--quick] [--out DIR]
        [--json PATH] [--soc "Snapdragon 8 Elite"] [--npu-presets tiny small restormer]
        [--npu-side 64]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasframe.architecture import Architecture  # noqa: E402
from nasframe.candidate import Candidate  # noqa: E402
from nasframe.deploy import _flat_tensors, export_module, exportable, ort_session  # noqa: E402

TARGET = 0.5
#: extra tables: (args) -> (title, rows) or None; rows are dicts printed as columns
TABLE_HOOKS: list[Callable[[argparse.Namespace], tuple[str, list[dict[str, Any]]] | None]] = []


def _pct(ts: list[float]) -> tuple[float, float, float]:
    p10, p90 = np.percentile(ts, [10, 90])
    return statistics.median(ts), float(p10), float(p90)


def _executorch(model, ready, inputs, path: Path, args) -> dict[str, Any]:
    """The model as an ExecuTorch program on XNNPACK (as the ``executorch`` latency backend
    makes it: torch.export of the export form, lowered, run in ExecuTorch's runtime), checked
    against PyTorch: ``{"run": call, "rel_error", "delegated_nodes", ...}`` or ``{"error"}``."""
    try:
        from nasframe_objectives.executorch_backend import load_method, lower_to_pte, set_threads

        pt2 = path.with_suffix(".pt2")
        export_module((ready if ready is not None else model).eval(), inputs, "exported_program",
                      pt2, check=False)
        summary = lower_to_pte(pt2, path.with_suffix(".pte"))
        set_threads(args.threads)
        method = load_method(path.with_suffix(".pte"))
        flat = [t.contiguous() for t in _flat_tensors(inputs)]
        with torch.no_grad():
            ref = _flat_tensors(model(*inputs))
        got = method.execute(flat)
        scale = max(float(r.abs().max()) for r in ref) or 1.0
        rel = max(float((g.reshape(r.shape) - r).abs().max()) for r, g in zip(ref, got)) / scale
        for f in (pt2, path.with_suffix(".pte")):
            f.unlink(missing_ok=True)
        return {"run": lambda: method.execute(flat), "rel_error": rel, **summary}
    except Exception as err:  # noqa: BLE001 - reported in the row, the others still run
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def measure(name: str, model: torch.nn.Module, inputs: tuple, folder: Path, args,
            ready: torch.nn.Module | None = None) -> dict[str, Any]:
    """Export ``ready`` (default: ``model``), check it, then time torch (``model``) and ORT
    interleaved."""
    model = model.eval()
    path = folder / f"{name.replace(' ', '_').replace('/', '_')}.onnx"
    start = time.perf_counter()
    res = export_module((ready if ready is not None else model).eval(), inputs, "onnx", path,
                        threads=args.threads)
    export_s = time.perf_counter() - start
    sess = ort_session(path, args.threads)
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), _flat_tensors(inputs))}
    et = _executorch(model, ready, inputs, path, args) if args.executorch else None
    t_torch: list[float] = []
    t_ort: list[float] = []
    t_et: list[float] = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(*inputs)
            sess.run(None, feed)
            if et and "run" in et:
                et["run"]()
        for _ in range(args.repeats):
            s = time.perf_counter()
            model(*inputs)
            t_torch.append((time.perf_counter() - s) * 1e3)
            s = time.perf_counter()
            sess.run(None, feed)
            t_ort.append((time.perf_counter() - s) * 1e3)
            if et and "run" in et:
                s = time.perf_counter()
                et["run"]()
                t_et.append((time.perf_counter() - s) * 1e3)
    tm, t10, t90 = _pct(t_torch)
    om, o10, o90 = _pct(t_ort)
    paired = statistics.median(o / t for o, t in zip(t_ort, t_torch))
    row = {"model": name, "input": [list(t.shape) for t in _flat_tensors(inputs)],
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "export_s": export_s, "max_rel_error": res.max_rel_error,
           "torch_ms": tm, "torch_p10": t10, "torch_p90": t90,
           "ort_ms": om, "ort_p10": o10, "ort_p90": o90, "ort_over_torch": paired,
           "onnx_nodes": sum(res.ops.values())}
    line = (f"  {name:28s} {row['params_M']:8.2f} {export_s:8.1f} {res.max_rel_error:9.1e} "
            f"{tm:9.1f} ({t10:.0f}-{t90:.0f}) {om:9.1f} ({o10:.0f}-{o90:.0f}) {paired:7.2f}")
    if et is not None:
        if t_et:
            em, e10, e90 = _pct(t_et)
            row.update(et_ms=em, et_p10=e10, et_p90=e90,
                       et_over_torch=statistics.median(e / t for e, t in zip(t_et, t_torch)),
                       et_rel_error=et["rel_error"], et_delegated=et["delegated_nodes"],
                       et_non_delegated=et["non_delegated_nodes"])
            line += (f" {em:9.1f} ({e10:.0f}-{e90:.0f}) {row['et_over_torch']:6.2f} "
                     f"{et['delegated_nodes']:>4d}/{et['non_delegated_nodes']:<4d}")
        else:
            row["et_error"] = et["error"]
            line += f"   ExecuTorch: {et['error'][:60]}"
    print(line, flush=True)
    path.unlink(missing_ok=True)
    return row


HEADER = (f"  {'model':28s} {'params M':>8s} {'export s':>8s} {'rel err':>9s} "
          f"{'torch ms (p10-p90)':>21s} {'ORT ms (p10-p90)':>21s} {'ORT/torch':>7s}")
#: the ExecuTorch columns (``--executorch``): median (p10-p90), ET / torch, XNNPACK nodes /
#: nodes left on ExecuTorch's portable kernels
ET_HEADER = f" {'ExecuTorch ms':>21s} {'ET/torch':>6s} {'xnn/rest':>9s}"


def _header(args) -> str:
    return HEADER + (ET_HEADER if args.executorch else "")


def ens_section(args, folder: Path) -> list[dict[str, Any]]:
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

    space = HybridUNetSpace(preset=args.preset, granularity="stage", input_size=args.side)
    stages = [d.name for d in space.decisions()]
    encoder = {"enc1", "enc2", "enc3", "latent"}
    full_res = {"enc1", "dec1", "refine"}
    archs = {
        "teacher (all transformer)": space.uniform("transformer"),
        "hybrid: SSM encoder+latent": Architecture({s: "ssm" if s in encoder else "transformer"
                                                    for s in stages}),
        "hybrid: SSM at full res": Architecture({s: "ssm" if s in full_res else "transformer"
                                                 for s in stages}),
        "all SSM": space.uniform("ssm"),
    }
    if args.quick:
        archs = {k: v for k, v in archs.items() if not k.startswith("hybrid")}
    print(f"\n1. ENS networks: hybrid_unet preset {args.preset}, input 1x3x{args.side}x{args.side}")
    print(_header(args))
    rows = []
    for name, arch in archs.items():
        cand = Candidate(space, arch, seed=0)
        model = cand.model
        inputs = cand.example_inputs()
        rows.append(measure(name, model, inputs, folder, args, exportable(space, arch, model)))
        rows[-1]["transformers"] = space.transformer_count(arch)
        cand.release()
    return rows


def sd_section(args, folder: Path) -> list[dict[str, Any]]:
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    space = SDUNetSpace(preset=args.sd_preset, **({"latent_size": 8} if args.quick else {}))
    refs = space.reference_architectures()
    jobs: list[tuple[str, str, str | None]] = [(f"unet {k}", k, None) for k in refs
                                               if not args.quick or k == "nanosd"]
    if "nanosd" in refs:
        jobs += [(f"{p} (nanosd)", "nanosd", p) for p in ("vae_encoder", "vae_decoder", "pipeline")
                 if not args.quick or p == "vae_decoder"]
    print(f"\n2. NanoSD family: sd_unet preset {args.sd_preset} (latent side {space.latent_size})")
    print(_header(args))
    rows = []
    for name, ref, part in jobs:
        cand = Candidate(space, refs[ref], seed=0)
        model = cand.module(part)
        inputs = cand.example_inputs(part=part)
        rows.append(measure(name, model, inputs, folder, args, exportable(space, refs[ref], model, part)))
        cand.release()
    return rows


def blocks_section(args, folder: Path) -> list[dict[str, Any]]:
    from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock

    shapes = ((16, 16, 1),) if args.quick else ((48, 64, 1), (96, 128, 2))
    print("\n3. Blocks: SSM (1 scan order, 16 states) vs Restormer transformer block")
    print(_header(args))
    rows = []
    for channels, side, heads in shapes:
        torch.manual_seed(0)
        x = torch.randn(1, channels, side, side)
        ssm = SSMBlock(channels, orders=1).eval()
        ready = SSMBlock(channels, orders=1).eval()
        ready.load_state_dict(ssm.state_dict())
        ready.ssm.backend = "export"
        shape = f"{channels}x{side}x{side}"
        t = measure(f"transformer {shape}", TransformerBlock(channels, heads), (x,), folder, args)
        s = measure(f"ssm {shape}", ssm, (x,), folder, args, ready)
        for r in (t, s):
            r["shape"] = shape
        s["ssm_over_transformer_ort"] = s["ort_ms"] / t["ort_ms"]
        s["ssm_over_transformer_torch"] = s["torch_ms"] / t["torch_ms"]
        if "et_ms" in s and "et_ms" in t:
            s["ssm_over_transformer_et"] = s["et_ms"] / t["et_ms"]
        rows += [t, s]
    for r in rows:
        if "ssm_over_transformer_ort" in r:
            ok = r["ssm_over_transformer_ort"] <= TARGET
            et = (f", ExecuTorch {r['ssm_over_transformer_et']:.2f}"
                  if "ssm_over_transformer_et" in r else "")
            print(f"  SSM / transformer at {r['shape']}: ORT {r['ssm_over_transformer_ort']:.2f}, "
                  f"torch {r['ssm_over_transformer_torch']:.2f}{et}; target <= {TARGET} in ORT: "
                  f"{'PASS' if ok else 'BELOW TARGET'}")
    return rows


def _proxy_experiment(args, space: str, shape: list[int]) -> dict[str, Any]:
    timing = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats}
    ort = {**timing, "optimize": "all", "spinning": False}
    if space == "hybrid_unet":
        space_cfg = {"name": "hybrid_unet", "params": {"preset": args.preset, "granularity": "block",
                                                       "input_size": shape[-1]}}
        extra = [{"name": "transformer_count"},
                 {"name": "latency_lut", "params": {
                     "backend": args.lut_backend, "input_shape": shape,
                     "options": ort if args.lut_backend == "onnxruntime" else timing,
                     "calibration": 1 if args.quick else 2, "check": 1 if args.quick else 4}}]
    else:   # sd_unet: the U-Net of random valid surgeries (NanoSD's parameters-vs-phone claim)
        space_cfg = {"name": "sd_unet", "params": {"preset": args.sd_preset,
                                                   **({"latent_size": 8} if args.quick else {})}}
        extra = []
        shape = None
    return {
        "name": f"deploy_proxies_{space}", "seed": 0, "search_space": space_cfg,
        "objectives": [
            {"name": "params"},
            {"name": "gmacs", **({"params": {"input_shape": shape}} if shape else {})},
            *extra,
            {"name": "latency", "id": "latency_torch",
             "params": {"backend": "torch", "options": timing,
                        **({"input_shape": shape} if shape else {})}},
            {"name": "latency", "id": "latency_ort",
             "params": {"backend": "onnxruntime", "options": ort,
                        **({"input_shape": shape} if shape else {})}},
            *([{"name": "latency", "id": "latency_et",
                "params": {"backend": "executorch", "options": timing, "input_shape": shape}}]
              if args.executorch and space == "hybrid_unet" else []),
        ],
        "strategy": {"name": "random"},
        "budget": {"trials": args.proxy_trials},
        "references": False,
    }


def proxies_section(args, folder: Path) -> list[dict[str, Any]]:
    """Kendall tau of each proxy against torch and ORT latency, and the LUT's error."""
    import math

    import nasframe
    from nasframe.proxy_check import proxy_check

    side = args.proxy_side
    shape = [1, 3, side, side]
    rows: list[dict[str, Any]] = []
    for space in args.proxy_spaces:
        exp = nasframe.Experiment.from_dict(_proxy_experiment(args, space, shape))
        what = (f"hybrid_unet architectures (preset {args.preset}, block granularity), input "
                f"1x3x{side}x{side}" if space == "hybrid_unet" else
                f"sd_unet U-Nets (preset {args.sd_preset}, latent side {exp.space.latent_size})")
        print(f"\n4. Proxies vs measured: {args.proxy_trials} random {what}, untrained weights",
              flush=True)
        t0 = time.perf_counter()
        out = folder / f"proxies-{space}"
        run = exp.run(out=out, quiet=True)
        trials = run.trials(status="complete")
        print(f"  run: {time.perf_counter() - t0:.0f} s, {len(trials)} complete trials")
        check = proxy_check(run)
        print(f"  {'proxy':<18} {'measured':<14} {'n':>3} {'tau':>6} {'p':>8}")
        for c in check.correlations:
            print(f"  {c.proxy:<18} {c.measured:<14} {c.n:>3} {c.tau:>6.2f} {c.p_value:>8.1e}")
            rows.append({"table": "tau", "space": space, "proxy": c.proxy,
                         "measured": c.measured, "n": c.n, "tau": c.tau, "p_value": c.p_value})
        meas = trials["latency_ort"].to_numpy(float)
        print(f"  ORT latency range {np.nanmin(meas):.1f}-{np.nanmax(meas):.1f} ms, torch "
              f"{np.nanmin(trials['latency_torch'].to_numpy(float)):.1f}-"
              f"{np.nanmax(trials['latency_torch'].to_numpy(float)):.1f} ms")
        if "latency_lut" not in trials:
            continue
        pred = trials["latency_lut"].to_numpy(float)
        ok = np.isfinite(pred) & np.isfinite(meas)
        rel = np.abs(pred[ok] - meas[ok]) / meas[ok]
        lut = json.loads((out / "latency_lut.json").read_text())
        rep = lut["report"]
        error = {"table": "lut_error", "space": space, "backend": args.lut_backend,
                 "variants": len(lut["table"]), "fixed_ms": lut["fixed_ms"],
                 "trials": int(ok.sum()),
                 "mean_rel_error": float(rel.mean()) if rel.size else math.nan,
                 "median_rel_error": float(np.median(rel)) if rel.size else math.nan,
                 "max_rel_error": float(rel.max()) if rel.size else math.nan,
                 "check_archs": rep.get("n"), "check_mean_rel_error": rep.get("mean_rel_error"),
                 "check_max_rel_error": rep.get("max_rel_error")}
        rows.append(error)
        print(f"  LUT ({error['variants']} variants timed on {args.lut_backend} + fixed part "
              f"{lut['fixed_ms']:.2f} ms) against ORT measured on {error['trials']} trials: "
              f"relative error mean {error['mean_rel_error']:.1%}, median "
              f"{error['median_rel_error']:.1%}, max {error['max_rel_error']:.1%} (its own "
              f"{rep.get('n')} check architectures: mean "
              f"{(rep.get('mean_rel_error') or math.nan):.1%}, max "
              f"{(rep.get('max_rel_error') or math.nan):.1%})")
    return rows


def _npu_jobs(args) -> list[tuple[str, Any, Any, str | None]]:
    """(name, space, architecture, part) of every export path the NPU section compiles."""
    from nasframe_search_spaces.denoiser import ConvDenoiserSpace
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    jobs: list[tuple[str, Any, Any, str | None]] = []
    for preset in args.npu_presets:
        space = HybridUNetSpace(preset=preset, granularity="stage", input_size=args.npu_side)
        stages = [d.name for d in space.decisions()]
        encoder = {"enc1", "enc2", "enc3", "latent"}
        archs = {"teacher": space.uniform("transformer"),
                 "hybrid: SSM encoder+latent": Architecture(
                     {s: "ssm" if s in encoder else "transformer" for s in stages}),
                 "hybrid: SSM at full res": Architecture(
                     {s: "ssm" if s in {"enc1", "dec1", "refine"} else "transformer"
                      for s in stages}),
                 "all SSM": space.uniform("ssm")}
        if args.quick or preset == "restormer":
            archs = {k: v for k, v in archs.items() if k in ("teacher", "all SSM")}
        jobs += [(f"hybrid_unet {preset} {k}", space, a, None) for k, a in archs.items()]
    sd = SDUNetSpace(preset=args.sd_preset, **({"latent_size": 8} if args.quick else {}))
    refs = sd.reference_architectures()
    jobs += [(f"sd_unet {args.sd_preset} unet {k}", sd, a, None) for k, a in refs.items()
             if not args.quick or k == "nanosd"]
    jobs += [(f"sd_unet {args.sd_preset} {p} (nanosd)", sd, refs["nanosd"], p)
             for p in ("vae_encoder", "vae_decoder")]
    den = ConvDenoiserSpace(input_size=args.npu_side)
    jobs += [(f"conv_denoiser {k}", den, a, None) for k, a in den.reference_architectures().items()]
    return jobs


def npu_section(args, folder: Path) -> list[dict[str, Any]]:
    from nasframe_objectives.qnn_htp import HtpTarget, check_graph

    target = HtpTarget.resolve(args.soc)
    print(f"\n5. NPU: every export path compiled for {target.describe()}, CPU fallback off; "
          "emulated fp16 output vs fp32 (ORT CPU)")
    print(f"  {'model':44s} {'compiles':>8s} {'compile s':>9s} {'PSNR dB':>8s} {'max abs':>9s}"
          "  refused ops")
    rows = []
    for name, space, arch, part in _npu_jobs(args):
        cand = Candidate(space, arch, seed=0)
        model, inputs = cand.module(part), cand.example_inputs(part=part)
        path = folder / f"npu-{len(rows)}.onnx"
        start = time.perf_counter()
        export_module(exportable(space, arch, model, part), inputs, "onnx", path,
                      threads=args.threads)
        export_s = time.perf_counter() - start
        rep = check_graph(path, target, inputs=inputs, threads=args.threads,
                          context=folder / f"npu-{len(rows)}_ctx.onnx")
        row = {"model": name, "input": [list(t.shape) for t in _flat_tensors(inputs)],
               "export_s": export_s, "compiles": rep.compiles, "compile_s": rep.compile_s,
               "psnr_db": rep.psnr_db, "max_abs_error": rep.max_abs_error, "run_s": rep.run_s,
               "refused_ops": rep.unsupported_ops, "error": rep.error, "qnn_ops": rep.qnn_ops,
               "onnx_nodes": rep.nodes, "soc": target.soc, **rep.versions}
        rows.append(row)
        refused = ", ".join(f"{k} x{v}" for k, v in rep.unsupported_ops.items()) or "none"
        print(f"  {name:44s} {'yes' if rep.compiles else 'NO':>8s} {rep.compile_s:9.1f} "
              f"{rep.psnr_db if rep.psnr_db is not None else float('nan'):8.1f} "
              f"{rep.max_abs_error if rep.max_abs_error is not None else float('nan'):9.3g}  "
              f"{refused}", flush=True)
        cand.release()
    return rows


def npu_profile_section(args, folder: Path) -> list[dict[str, Any]]:
    """The HTP emulator's profiling cycles against identical re-runs and this CPU's time."""
    import csv

    from nasframe_objectives.qnn_htp import (HtpTarget, check_graph, htp_session, make_feed,
                                             read_profile)
    from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock

    target = HtpTarget.resolve(args.soc)
    side = 16 if args.quick else 64
    torch.manual_seed(0)
    ssm = SSMBlock(48, orders=1).eval()
    ssm.ssm.backend = "export"
    graphs = {f"conv x4, 32 channels, {side}x{side}": torch.nn.Sequential(
                  *[m for _ in range(4) for m in (torch.nn.Conv2d(32, 32, 3, padding=1),
                                                  torch.nn.ReLU())]),
              f"transformer block 48x{side}x{side}": TransformerBlock(48, 1),
              f"ssm block 48x{side}x{side}": ssm}
    print(f"\n6. NPU profile: the HTP emulator's 'accelerator (execute) cycles' for identical "
          f"runs of one compiled graph ({args.npu_repeats} runs each)")
    print(f"  {'graph':36s} {'cycles min-max (M)':>20s} {'max/min':>7s} {'cycles per host us':>19s}")
    rows = []
    for name, net in graphs.items():
        x = torch.randn(1, 32 if name.startswith("conv") else 48, side, side)
        path = folder / f"prof-{len(rows)}.onnx"
        export_module(net.eval(), (x,), "onnx", path, threads=args.threads)
        ctx = folder / f"prof-{len(rows)}_ctx.onnx"
        assert check_graph(path, target, inputs=(x,), context=ctx).compiles
        cycles, ratio = [], []
        for r in range(args.npu_repeats):
            prof = folder / f"prof-{len(rows)}-{r}.csv"
            session = htp_session(ctx, target, profile_csv=prof)
            start = time.perf_counter()
            session.run(None, make_feed(session, (x,)))
            wall_us = (time.perf_counter() - start) * 1e6
            del session
            cycles.append(read_profile(prof)["execute_cycles"])
            ratio.append(cycles[-1] / wall_us)
            with prof.open(newline="") as f:
                host_us = [int(row["Time"]) for row in csv.DictReader(f)
                           if row["Event Identifier"] == "Accelerator (execute) time"]
        row = {"graph": name, "cycles": cycles, "cycles_per_host_us": ratio,
               "spread": max(cycles) / min(cycles), "reported_exec_us": host_us[-1:],
               "last_wall_us": wall_us, "load": os.getloadavg()[0]}
        rows.append(row)
        print(f"  {name:36s} {min(cycles) / 1e6:9.1f}-{max(cycles) / 1e6:<9.1f} "
              f"{row['spread']:7.2f} {min(ratio):8.0f}-{max(ratio):<8.0f}   (reported execute "
              f"time {host_us[-1] / 1e3:.0f} ms, host wall {wall_us / 1e3:.0f} ms)", flush=True)
    return rows


SECTIONS = {"ens": ens_section, "sd": sd_section, "blocks": blocks_section,
            "proxies": proxies_section, "npu": npu_section, "npu_profile": npu_profile_section}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=("restormer", "small", "tiny"))
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--sd-preset", default="tiny", choices=("sd15", "latent16", "tiny"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sections", default="ens,sd,blocks,proxies")
    parser.add_argument("--proxy-trials", type=int, default=24,
                        help="random architectures in the proxies section")
    parser.add_argument("--proxy-side", type=int, default=128,
                        help="input side of the proxies section")
    parser.add_argument("--proxy-spaces", nargs="+", default=None,
                        choices=("hybrid_unet", "sd_unet"),
                        help="spaces of the proxies section (default both; --quick: hybrid_unet)")
    parser.add_argument("--lut-backend", default="onnxruntime", choices=("onnxruntime", "torch"),
                        help="where latency_lut times its block variants")
    parser.add_argument("--soc", default="Snapdragon 8 Elite", help="NPU sections: the SoC")
    parser.add_argument("--npu-presets", nargs="+", default=["tiny", "small", "restormer"],
                        choices=("restormer", "small", "tiny"),
                        help="NPU section: hybrid_unet presets compiled")
    parser.add_argument("--npu-side", type=int, default=64, help="NPU section: input side")
    parser.add_argument("--npu-repeats", type=int, default=3,
                        help="NPU profile section: identical profiled runs per graph")
    parser.add_argument("--executorch", action=argparse.BooleanOptionalAction, default=None,
                        help="also time each model as an ExecuTorch program on XNNPACK (default: "
                             "when executorch is installed)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (for the test): tiny presets, 16x16, few calls")
    parser.add_argument("--out", type=Path, default=None, help="keep the exports here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.side, args.sd_preset = "tiny", 16, "tiny"
        args.repeats, args.warmup = 2, 1
        args.proxy_trials, args.proxy_side, args.lut_backend = 3, 16, "torch"
        args.proxy_spaces = args.proxy_spaces or ["hybrid_unet"]
        args.npu_presets, args.npu_side, args.npu_repeats = ["tiny"], 16, 2
    args.proxy_spaces = args.proxy_spaces or ["hybrid_unet", "sd_unet"]
    if args.executorch is None:
        import importlib.util

        args.executorch = importlib.util.find_spec("executorch") is not None
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__} (CPUExecutionProvider), "
          f"{args.threads} threads, median of {args.repeats} interleaved calls after "
          f"{args.warmup} warm-up; cores {os.cpu_count()}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    result: dict[str, Any] = {"torch": torch.__version__, "onnxruntime": ort.__version__,
                              "threads": args.threads, "repeats": args.repeats, "sections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for s in sections:
            result["sections"][s] = SECTIONS[s](args, folder)
    for hook in TABLE_HOOKS:
        table = hook(args)
        if table is not None:
            title, rows = table
            print(f"\n{title}")
            for r in rows:
                print("  " + "  ".join(f"{k} {v}" for k, v in r.items()))
            result["sections"][title] = rows
    blocks = [r for r in result["sections"].get("blocks", []) if "ssm_over_transformer_ort" in r]
    result["pass"] = bool(blocks) and all(r["ssm_over_transformer_ort"] <= TARGET for r in blocks)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
