"""The deployable bundle of one ``quad`` candidate, and ``python -m nasframe_search_spaces.quad.bundle``.

``export_bundle`` writes into ``out``:

``graph.onnx`` (+ ``.json``, ``.tasks.json``)
    the float graph, every adapter tensor a graph input; per task, ONNX Runtime fed
    that task's adapter vs the PyTorch model with it merged (max error).
``adapters/<task>.pt``
    each task's QUAD adapter (``{graph input name: tensor}``; load it with
    ``torch.load(path, weights_only=True)``).
``profile.encodings``
    the shared profile QUAD trained against, under the simulation's keys (AIMET layout).
``graph.encodings``
    the same profile under ``graph.onnx``'s tensor names (AIMET layout 1.0.0: what
    ``aimet_onnx``'s ``load_encodings_to_sim`` loads onto ``graph.onnx``, and what QNN /
    AI Hub read), each block's weights at its searched bit widths.
``graph_qdq.onnx``
    ``graph.onnx`` with exactly those encodings as QuantizeLinear/DequantizeLinear pairs
    (no re-calibration): the graph QUAD trained against, ready for an NPU compiler.
``bundle.json``
    what was written, the export checks, and per task the PSNR of fp32 / QUAD (torch
    simulation) / the QDQ graph in ONNX Runtime on the validation tiles (and, with
    ``npu``, as onnxruntime-qnn's emulated Hexagon NPU computes it).

Command line (after ``nasframe run``)::

    python -m nasframe_search_spaces.quad.bundle runs/quad_restoration [--arch pick|largest|smallest]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasframe.architecture import Architecture


def tiles(pairs, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``size`` x ``size`` tiles of validation pairs (a fixed-shape graph's inputs)."""
    xs, ys = [], []
    for x, y in pairs:
        h, w = x.shape[-2:]
        for top in range(0, h - size + 1, size):
            for left in range(0, w - size + 1, size):
                xs.append(x[..., top:top + size, left:left + size])
                ys.append(y[..., top:top + size, left:left + size])
    if not xs:
        raise ValueError(f"validation images smaller than the graph's input ({size} px); "
                         "lower input_size or raise data.val_size")
    return torch.cat(xs), torch.cat(ys)


def calibration_input(data, size: int, step: int) -> torch.Tensor:
    """A (1, C, size, size) input from training crops (a mosaic when the crops are smaller)."""
    n = -(-size // data.patch)
    crops = data.train_batch(n * n, step)[0]
    rows = [torch.cat(list(crops[i * n:(i + 1) * n]), dim=-1) for i in range(n)]
    return torch.cat(rows, dim=-2)[None, :, :size, :size].contiguous()


def run_tiles(sess, model, val, adapters, ctx=None, description: str = "") -> dict[str, np.ndarray]:
    """Every task's validation tiles through an ONNX Runtime session of the adapter graph
    (a progress bar on ``ctx`` when given: the emulated NPU takes seconds a tile)."""
    import contextlib

    from nasframe_search_spaces.quad.deploy import feed

    out: dict[str, np.ndarray] = {}
    with (ctx.progress() if ctx is not None else contextlib.nullcontext()) as bar:
        task = bar.add_task(description, total=sum(len(x) for x, _ in val.values()), info="") \
            if bar is not None else None
        for t, (x, _) in val.items():
            rows = []
            for i in range(len(x)):
                rows.append(sess.run(None, feed(model, x[i:i + 1], adapters[t]))[0])
                if bar is not None:
                    bar.update(task, advance=1, info=t)
            out[t] = np.concatenate(rows)
    return out


def psnr_np(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR (dB) of ``a`` against ``b``."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def aimet_check(out: Path, model, val, adapters, ort_out: dict[str, np.ndarray],
                ctx=None) -> dict[str, Any]:
    """Qualcomm's AIMET on the bundle in ``out``: ``graph.encodings`` loaded onto
    ``graph.onnx`` with ``strict=True`` (:func:`.deploy.aimet_sim`), and ``graph_qdq.onnx``
    imported by ``QuantizationSimModel.from_onnx_qdq``; per task, the PSNR (dB) of each
    AIMET simulation against ONNX Runtime's output of the QDQ graph (``ort_out``)."""
    import logging

    import onnx
    from aimet_onnx.quantsim import QuantizationSimModel

    from nasframe_search_spaces.quad.deploy import aimet_sim

    enc = json.loads((out / "graph.encodings").read_text())
    loaded = aimet_sim(out / "graph.onnx", enc)
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    handler = _Keep(level=logging.INFO)
    logging.getLogger("Quant").addHandler(handler)
    try:
        imported = QuantizationSimModel.from_onnx_qdq(onnx.load(str(out / "graph_qdq.onnx")))
    finally:
        logging.getLogger("Quant").removeHandler(handler)
    import aimet_onnx

    result: dict[str, Any] = {
        "aimet_onnx": getattr(aimet_onnx, "__version__", "?"),
        "strict_load": "ok", "enabled_quantizers": sum(q.enabled for q in
                                                       loaded.qc_quantize_op_dict.values()),
        "encodings": len(enc["activation_encodings"]) + len(enc["param_encodings"]),
        "from_onnx_qdq": next((m for m in records if m.startswith("Loaded")), "imported"),
        "from_onnx_qdq_ignored": next((m for m in records if "ignored" in m), None)}
    for name, sim in (("strict_load_vs_ort_db", loaded), ("from_onnx_qdq_vs_ort_db", imported)):
        got = run_tiles(sim.session, model, val, adapters, ctx,
                        f"tiles in AIMET ({name.removesuffix('_vs_ort_db')})")
        result[name] = {t: psnr_np(got[t], ort_out[t]) for t in got}
    return result


def export_bundle(space, arch: Architecture, model, out: str | Path, ctx=None,
                  qdq: bool = True, npu: bool = False, aimet: bool = False) -> dict[str, Any]:
    """Export ``model`` (built by ``space`` for ``arch``, space prepared) to ``out``; with
    ``npu`` also compile the QDQ graph for the emulated Hexagon NPU (onnxruntime-qnn)
    and score every task as it computes them; with ``aimet`` check the encodings and the
    QDQ graph with Qualcomm's AIMET (:func:`aimet_check`)."""
    from nasframe.deploy import ort_session, qdq_session
    from nasframe_search_spaces.hybrid_unet.data import psnr
    from nasframe_search_spaces.quad.deploy import export_adapter_graph, ship_profile

    out = Path(out)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    prof = space.profiles(arch, model, ctx)
    adapters = prof["adapters"]
    size = space.input_shape[-1]
    report: dict[str, Any] = {"arch": arch.to_dict(), "tasks": list(space.tasks()), "input_size": size}
    start = time.time()
    for t, ad in adapters.items():
        torch.save(model.adapter_state(ad), out / "adapters" / f"{t}.pt")
    weights = {s.name: layer.base.weight for s, layer in zip(model.slots, model.layers)}
    weights.update({n: m.weight for n, m in model.net.named_modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not n.endswith(".base")})
    prof["shared"].save(out / "profile.encodings", weights)
    example = torch.rand(1, *space.input_shape, generator=torch.Generator().manual_seed(0))
    graph = export_adapter_graph(model, example, adapters, out / "graph.onnx")
    report["graph"] = {k: graph[k] for k in ("path", "lora_inputs", "lora_initializers",
                                             "adapter_params", "per_task", "max_abs_error", "seconds")}
    report["graph"]["inputs"] = len(graph["input_names"])
    psnrs: dict[str, dict[str, float]] = {}
    sim = space._sim(arch, model)
    val = {t: tiles(space.task_data(t).validation(), size) for t in space.tasks()}

    def mean_psnr(fn, x, y):
        with torch.no_grad():
            return float(np.mean([min(psnr(fn(x[i:i + 1]).clamp(0, 1), y[i:i + 1]), 100.0)
                                  for i in range(len(x))]))

    for t in space.tasks():
        x, y = val[t]
        sim.set_mode("float")
        row = {"fp32": mean_psnr(lambda v, t=t: model(v, *model.task_adapters[t]), x, y)}
        sim.set_mode("quant", prof["shared"])
        row["quad_sim"] = mean_psnr(lambda v, t=t: sim(v, *adapters[t]), x, y)
        sim.set_mode("float")
        psnrs[t] = row
    if qdq:
        start_q = time.time()
        enc = ship_profile(sim, prof["shared"], out / "graph.onnx", out / "graph_qdq.onnx",
                           out / "graph.encodings")
        qpath = out / "graph_qdq.onnx"
        outputs = {"qdq_ort": run_tiles(qdq_session(qpath, threads=1), model, val, adapters)}
        float_out = run_tiles(ort_session(out / "graph.onnx", threads=1), model, val, adapters)
        report["qdq"] = {"path": str(qpath), "encodings": str(out / "graph.encodings"),
                         "activation_encodings": len(enc["activation_encodings"]),
                         "param_encodings": len(enc["param_encodings"]),
                         "requantised_inputs": len(enc["requantised_inputs"]),
                         "lora_encodings": sum(e["name"].startswith("lora.")
                                               for e in enc["activation_encodings"]),
                         "weight_bits": dict(sorted(Counter(
                             e["bw"] for e in enc["param_encodings"]).items())),
                         "seconds": time.time() - start_q,
                         # what quantising costs: the QDQ graph's output against the float graph's
                         "vs_float_db": {t: psnr_np(outputs["qdq_ort"][t], float_out[t])
                                         for t in space.tasks()}}
        if aimet:
            report["aimet"] = aimet_check(out, model, val, adapters, outputs["qdq_ort"], ctx)
        if npu:
            from nasframe_search_spaces.quad.deploy import htp_session

            t0 = time.time()
            sess = htp_session(qpath)
            report["npu"] = {"compile_s": time.time() - t0, "device": "onnxruntime-qnn HTP "
                             "(emulated Snapdragon 8 Elite, soc 69, htp_arch 79), CPU fallback off"}
            t0 = time.time()
            outputs["qdq_npu"] = run_tiles(sess, model, val, adapters, ctx, "tiles on the emulated NPU")
            report["npu"]["run_s"] = time.time() - t0
            report["npu"]["vs_ort_cpu_db"] = {
                t: psnr_np(outputs["qdq_npu"][t], outputs["qdq_ort"][t]) for t in space.tasks()}
        for key, got in outputs.items():
            for t in space.tasks():
                psnrs[t][key] = float(np.mean([min(psnr(torch.from_numpy(g).clamp(0, 1), yy), 100.0)
                                               for g, yy in zip(got[t], val[t][1])]))
    report["psnr"] = psnrs
    report["tiles"] = {t: len(v[0]) for t, v in val.items()}
    report["seconds"] = time.time() - start
    (out / "bundle.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    from nasframe.candidate import Candidate
    from nasframe.capabilities import MultiTask, TrainedWeights
    from nasframe.results import load_run

    ap = argparse.ArgumentParser(prog="python -m nasframe_search_spaces.quad.bundle",
                                 description="Export a quad run's candidate: one graph with "
                                             "adapter inputs, adapters, encodings, QDQ graph.")
    ap.add_argument("run_dir")
    ap.add_argument("--arch", default="pick", help="pick (the strategy's pick), largest or smallest")
    ap.add_argument("--out", default=None, help="default: RUN_DIR/deploy")
    ap.add_argument("--no-qdq", action="store_true", help="skip the QDQ graph")
    ap.add_argument("--npu", action="store_true",
                    help="also compile the QDQ graph for the emulated Hexagon NPU "
                         "(onnxruntime-qnn) and score each task on it")
    ap.add_argument("--aimet", action="store_true",
                    help="also load the encodings and import the QDQ graph with aimet-onnx "
                         "(strict), and compare its simulation with ONNX Runtime")
    args = ap.parse_args(argv)
    run = load_run(args.run_dir)
    exp = run.experiment()
    space = exp.space
    if space.name != "quad":
        ap.error(f"{args.run_dir} searched space {space.name!r}, not 'quad'")
    ctx = exp.context(args.run_dir)
    space.prepare(ctx, frozenset({TrainedWeights, MultiTask}))
    seed = 0
    if (args.npu or args.aimet) and args.no_qdq:
        ap.error("--npu and --aimet check the QDQ graph; drop --no-qdq")
    if args.arch == "pick":
        pick = run.pick_result
        if pick is None:
            ap.error("the run has no pick yet; give --arch largest or smallest")
        arch, seed = pick.trial.arch, pick.trial.seed
    else:
        refs = space.reference_architectures()
        if args.arch not in refs:
            ap.error(f"--arch {args.arch!r}: use pick, {', '.join(refs)}")
        arch = refs[args.arch]
    model = Candidate(space, arch, seed=seed).model
    report = export_bundle(space, arch, model, Path(args.out or Path(args.run_dir) / "deploy"), ctx,
                           qdq=not args.no_qdq, npu=args.npu, aimet=args.aimet)
    print(json.dumps({k: report[k] for k in ("graph", "qdq", "aimet", "npu", "psnr") if k in report},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
