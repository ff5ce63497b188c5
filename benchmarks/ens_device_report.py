"""ENS against the runtime: per restoration task, examples/ens_device.yaml's search (PSNR
against latency measured in ONNX Runtime), its pick against the teacher in that runtime, the
lookup table's error against the measured latency, and which proxy ranks the latency.

For each task (``--tasks``: denoise, deblur, derain; the data settings of
``examples/ens_{task}.yaml``) the experiment of ``examples/ens_device.yaml`` is run with the
task swapped in (``--teacher-steps``, ``--distill-steps``, ``--stitch-steps``, ``--trials`` override the example's
budget; the teacher and the distilled blocks are cached in ``--cache``, shared by the tasks'
runs and by ``nasframe run examples/ens_device.yaml``), in ``--out``/``<task>``. Then:

1. **Pick vs teacher**: the teacher (all transformer, a reference of the run) and the ENS
   pick (``PSNR - penalty x latency`` over the front), each exported as the search exported
   it and timed in ONNX Runtime again, interleaved call by call (``--repeats`` each, the
   median; ``--threads`` intra-op threads, spin-waiting off), so that load hits both alike.
   Reported: both PSNRs and their difference, both times and the speed-up (target: at least
   1.5x within 0.3 dB).
2. **Lookup table vs measured**: ``latency_lut`` (ORT-timed block variants plus a measured
   fixed part) against the measured ``latency`` of every complete trial of the run: mean,
   median and max relative error (target: mean <= 10 % on quiet cores) and the table's own
   check (``RUN_DIR/latency_lut.json``).
3. **Proxies**: ``nasframe analyse``'s table: Kendall tau of each proxy (``transformer_count``,
   ``latency_lut``) against the measured ORT latency over the run's trials.
4. **Side by side**: every complete trial's export timed again in one window (``--rounds``
   rounds, a new random order each): how well the search's own latency, the lookup table
   and the transformer count rank these times (Kendall tau), and the table's error
   against them. On a shared machine the search's measurements, minutes apart, carry the
   machine's slow and fast phases; this is the ranking they should have given.

The load average is printed beside every timing. Usage::

    python benchmarks/ens_device_report.py [--tasks denoise,deblur,derain] [--trials 24]
        [--teacher-steps 1500] [--distill-steps 400] [--stitch-steps 400] [--network '{dim: 48, heads: [1, 2, 4, 8]}']
        [--penalty 0.02] [--repeats 20] [--threads 2] [--rounds 30]
        [--out runs/ens_device_report] [--cache runs/ens_cache] [--json PATH]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe import Experiment, load_run  # noqa: E402

EXAMPLE = ROOT / "examples" / "ens_device.yaml"
#: each task's data settings (those of examples/ens_{task}.yaml)
TASK_DATA = {"denoise": {"sigma": 25, "patch": 48, "val_size": 128},
             "deblur": {"kernel": "mixed", "patch": 48, "val_size": 128},
             "derain": {"patch": 48, "val_size": 128}}
SPEEDUP, DB = 1.5, 0.3


def task_config(task: str, args) -> dict:
    """examples/ens_device.yaml with ``task`` swapped in and the budget overrides."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    p = cfg["search_space"]["params"]
    p.update(task=task, data=dict(TASK_DATA[task]))
    if args.teacher_steps is not None:
        p["teacher"] = {**p["teacher"], "steps": args.teacher_steps}
    if args.distill_steps is not None:
        p["distill"] = {**p["distill"], "steps": args.distill_steps}
    if args.stitch_steps is not None:
        p["distill"] = {**p["distill"], "stitch": {**p["distill"].get("stitch", {}),
                                                   "steps": args.stitch_steps}}
    if args.network:
        p["network"] = {**p.get("network", {}), **args.network}
    if args.penalty is not None:
        cfg["strategy"]["params"]["penalty"] = args.penalty
    if args.trials is not None:
        cfg["budget"]["trials"] = args.trials
    if args.time is not None:
        cfg["budget"]["time"] = args.time
    cfg["name"] = f"ens_device_{task}"
    cfg["cache_dir"] = str(args.cache)
    cfg.pop("output", None)
    return cfg


def _mapping(text: str) -> dict:
    """A YAML mapping from the command line (``yaml.safe_load``: data, never code)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML mapping: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a mapping, e.g. '{{dim: 48}}'")
    return value


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _session(run, run_dir: Path, trial, threads: int):
    """An ORT session of the graph the search timed for ``trial`` (found by architecture
    and graph hash in the run's export caches) and its inputs."""
    import numpy as np

    from nasframe.deploy import ort_session

    roots = [run_dir / "cache"] + ([Path(run.config.cache_dir)] if run.config.cache_dir else [])
    export = trial.provenance["latency"].details["export"]
    path, meta = None, {}
    found = [p for root in roots for p in (root / "exports").glob(f"{trial.arch.id}-*.onnx")]
    for f in found:
        meta = json.loads(Path(str(f) + ".json").read_text())
        if meta["graph_hash"] == export["graph_hash"]:   # the graph the search timed
            path = f
            break
    if path is None and found:   # the same architecture with other weights (a run
        path = found[0]          # sharing the cache): the same ops, the same time
        meta = json.loads(Path(str(path) + ".json").read_text())
    if path is None:
        raise FileNotFoundError(f"the export of trial {trial.number} timed by the search is "
                                f"not in {', '.join(map(str, roots))}")
    sess = ort_session(path, threads)
    rng = np.random.default_rng(0)
    feed = {i.name: rng.random(s, dtype=np.float32)
            for i, s in zip(sess.get_inputs(), meta["input_shapes"])}
    return sess, feed


def side_by_side(run_dir: Path, rounds: int, threads: int) -> dict:
    """Every complete trial's export timed again, all in one window: ``rounds`` rounds, each
    trial once per round in a new random order (so that a slow phase of the machine falls
    on all alike), the median per trial. Against these: Kendall tau of the search's own
    latency and of each proxy, and the lookup table's error."""
    import random

    from scipy.stats import kendalltau

    run = load_run(run_dir)
    trials = [t for t in run.trial_list() if t.status == "complete"
              and math.isfinite(t.values.get("latency", math.nan))]
    sessions = {t.number: _session(run, run_dir, t, threads) for t in trials}
    for sess, feed in sessions.values():
        sess.run(None, feed)
    times: dict[int, list[float]] = {n: [] for n in sessions}
    order, rng, load = list(sessions), random.Random(0), _load()
    for _ in range(rounds):
        rng.shuffle(order)
        for n in order:
            sess, feed = sessions[n]
            start = time.perf_counter()
            sess.run(None, feed)
            times[n].append((time.perf_counter() - start) * 1e3)
    truth = [statistics.median(times[t.number]) for t in trials]
    out: dict = {"n": len(trials), "rounds": rounds, "load_average": load,
                 "min_ms": min(truth), "max_ms": max(truth), "tau": {}}
    for key in ("latency", "latency_lut", "transformer_count"):
        vals = [t.values.get(key, math.nan) for t in trials]
        if all(math.isfinite(v) for v in vals):
            res = kendalltau(vals, truth)
            out["tau"][key] = {"tau": float(res.statistic), "p_value": float(res.pvalue)}
    if all(math.isfinite(t.values.get("latency_lut", math.nan)) for t in trials):
        rel = [abs(t.values["latency_lut"] - m) / m for t, m in zip(trials, truth)]
        out["lut_mean_rel_error"], out["lut_max_rel_error"] = statistics.mean(rel), max(rel)
    return out


def _db(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def teacher_vs_pick(run_dir: Path, repeats: int, threads: int) -> dict:
    """The run's teacher, its pick and its fastest trial within ``DB`` dB of the teacher
    (by the strategy's ``cost``, the search's latency or the lookup table: the target read
    as a constraint, whatever the pick's rule), exported as the search exported them, timed
    in ORT interleaved."""
    run = load_run(run_dir)
    pick = run.pick_result
    cost = run.config.strategy.params.get("cost", "latency")
    teacher = next(t for t in run.analysis.trials if t.origin == "reference:teacher")
    all_ssm = next((t for t in run.analysis.trials if t.origin == "reference:all_ssm"), None)
    near = [t for t in run.trial_list() if t.status == "complete"
            and t.values.get("psnr", -math.inf) >= teacher.values["psnr"] - DB
            and math.isfinite(t.values.get(cost, math.nan))]
    within = min(near, key=lambda t: (t.values[cost], -t.values["psnr"]))
    chosen = {"teacher": teacher, "pick": pick.trial, "within": within}
    sessions, feeds = {}, {}
    for name, trial in chosen.items():
        sessions[name], feeds[name] = _session(run, run_dir, trial, threads)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(2):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    load = _load()
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - start) * 1e3)

    def speedup(k):
        return statistics.median(t / p for t, p in zip(times["teacher"], times[k]))
    return {"teacher_psnr": teacher.values["psnr"], "pick_psnr": pick.trial.values["psnr"],
            "all_ssm_psnr": all_ssm.values.get("psnr") if all_ssm is not None else None,
            "psnr_drop": teacher.values["psnr"] - pick.trial.values["psnr"],
            "teacher_ms": statistics.median(times["teacher"]),
            "pick_ms": statistics.median(times["pick"]), "speedup": speedup("pick"),
            "teacher_search_ms": teacher.values["latency"],
            "pick_search_ms": pick.trial.values["latency"],
            "pick_transformers": pick.trial.values.get("transformer_count"),
            "pick_trial": pick.trial.number, "pick_rule": pick.rule,
            "within": {"trial": within.number, "psnr": within.values["psnr"], "by": cost,
                       "psnr_drop": teacher.values["psnr"] - within.values["psnr"],
                       "ms": statistics.median(times["within"]), "speedup": speedup("within"),
                       "transformers": within.values.get("transformer_count")},
            "load_average": load, "threads": threads}


def lut_error(run_dir: Path) -> dict:
    """latency_lut against the measured latency over the run's complete trials, and the
    table's own check."""
    run = load_run(run_dir)
    rel = [abs(t.values["latency_lut"] - t.values["latency"]) / t.values["latency"]
           for t in run.trial_list() if t.status == "complete"
           and math.isfinite(t.values.get("latency_lut", math.nan))
           and math.isfinite(t.values.get("latency", math.nan))]
    doc = json.loads((run_dir / "latency_lut.json").read_text())
    rep = doc.get("report", {})
    return {"n": len(rel), "mean_rel_error": statistics.mean(rel) if rel else None,
            "median_rel_error": statistics.median(rel) if rel else None,
            "max_rel_error": max(rel) if rel else None,
            "table_entries": len(doc["table"]), "fixed_ms": doc["fixed_ms"],
            "check_n": rep.get("n"), "check_mean_rel_error": rep.get("mean_rel_error"),
            "check_max_rel_error": rep.get("max_rel_error")}


def proxies(run_dir: Path) -> list[dict]:
    from nasframe.proxy_check import proxy_check

    check = proxy_check(load_run(run_dir))
    return [{"proxy": c.proxy, "measured": c.measured, "n": c.n, "tau": c.tau,
             "p_value": c.p_value} for c in check.correlations]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="denoise,deblur,derain")
    parser.add_argument("--trials", type=int, default=None, help="default: the example's")
    parser.add_argument("--time", default=None, help="time cap per run (default: the example's)")
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--distill-steps", type=int, default=None)
    parser.add_argument("--stitch-steps", type=int, default=None,
                        help="steps of stitched distillation (0: feature distillation only)")
    parser.add_argument("--network", type=_mapping, default=None,
                        help="overrides of the preset, YAML, e.g. '{dim: 48, heads: [1, 2, 4, 8]}' "
                             "(Restormer's published width at the small preset's depth)")
    parser.add_argument("--penalty", type=float, default=None,
                        help="dB per ms of the penalty rule (the example picks by max_drop "
                             "instead; the penalty only applies without it)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds of the side-by-side re-timing of every trial")
    parser.add_argument("--out", type=Path, default=Path("runs/ens_device_report"))
    parser.add_argument("--cache", type=Path, default=Path("runs/ens_cache"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = sorted(set(tasks) - set(TASK_DATA))
    if bad:
        parser.error(f"unknown task(s) {', '.join(bad)}; use {', '.join(TASK_DATA)}")
    result: dict = {"tasks": {}}
    for task in tasks:
        run_dir = args.out / task
        start = time.perf_counter()
        if not (run_dir / "trials.db").exists():
            print(f"{task}: running the search in {run_dir} (load average {_load():.2f})",
                  flush=True)
            Experiment.from_dict(task_config(task, args)).run(out=run_dir, quiet=False)
        else:
            print(f"{task}: using the finished run in {run_dir}", flush=True)
        row = {"run_s": time.perf_counter() - start, **teacher_vs_pick(run_dir, args.repeats,
                                                                       args.threads)}
        row["lut"] = lut_error(run_dir)
        row["proxies"] = proxies(run_dir)
        row["side_by_side"] = side_by_side(run_dir, args.rounds, args.threads)
        result["tasks"][task] = row
    print(f"\nPick vs teacher in ONNX Runtime (128x128, {args.threads} threads, median of "
          f"{args.repeats} interleaved calls; target >= {SPEEDUP}x within {DB} dB)")
    print(f"  {'task':8s} {'teacher dB':>10s} {'pick dB':>8s} {'drop dB':>8s} {'teacher ms':>10s} "
          f"{'pick ms':>8s} {'speed-up':>9s} {'transformers':>12s} {'load':>5s} {'':4s} "
          f"{'all-SSM dB':>10s}")
    for task, r in result["tasks"].items():
        ok = r["speedup"] >= SPEEDUP and r["psnr_drop"] <= DB
        r["pass"] = ok
        print(f"  {task:8s} {r['teacher_psnr']:10.2f} {r['pick_psnr']:8.2f} {r['psnr_drop']:8.2f} "
              f"{r['teacher_ms']:10.1f} {r['pick_ms']:8.1f} {r['speedup']:8.2f}x "
              f"{r['pick_transformers']!s:>12s} {r['load_average']:5.1f} "
              f"{'PASS' if ok else 'MISS'} {_db(r.get('all_ssm_psnr')):>10s}")
    print(f"\nFastest trial within {DB} dB of the teacher (by the strategy's cost), re-timed "
          f"with the two above")
    for task, r in result["tasks"].items():
        w = r["within"]
        print(f"  {task:8s} trial {w['trial']} (by {w['by']}): {w['psnr']:.2f} dB ({-w['psnr_drop']:+.2f}), "
              f"{w['ms']:.1f} ms, {w['speedup']:.2f}x, {w['transformers']} transformers "
              f"{'PASS' if w['speedup'] >= SPEEDUP else 'MISS'}")
    print("\nlatency_lut against the measured ORT latency (every complete trial; target mean "
          "<= 10 %)")
    print(f"  {'task':8s} {'n':>3s} {'mean':>6s} {'median':>7s} {'max':>6s} {'entries':>8s} "
          f"{'fixed ms':>9s} {'own check mean/max (n)':>24s}")
    for task, r in result["tasks"].items():
        lt = r["lut"]

        def pct(v):
            return f"{100 * v:.1f}%" if v is not None else "-"
        print(f"  {task:8s} {lt['n']:3d} {pct(lt['mean_rel_error']):>6s} "
              f"{pct(lt['median_rel_error']):>7s} {pct(lt['max_rel_error']):>6s} "
              f"{lt['table_entries']:8d} {lt['fixed_ms']:9.2f} "
              f"{pct(lt['check_mean_rel_error']) + ' / ' + pct(lt['check_max_rel_error']):>18s}"
              f" ({lt['check_n']})")
    print("\nKendall tau of each proxy against the measured ORT latency (nasframe analyse)")
    for task, r in result["tasks"].items():
        cells = ", ".join(f"{c['proxy']} {c['tau']:.2f} (p {c['p_value']:.2g}, n {c['n']})"
                          for c in r["proxies"] if c["measured"] == "latency")
        print(f"  {task:8s} {cells}")
    print("\nEvery complete trial's export timed again side by side (one window, a new random "
          "order per round): Kendall tau against these times, and the lookup table's error")
    for task, r in result["tasks"].items():
        sb = r["side_by_side"]
        cells = ", ".join(f"{k} {v['tau']:.2f} (p {v['p_value']:.2g})" for k, v in sb["tau"].items())
        lut = (f"; latency_lut error mean {100 * sb['lut_mean_rel_error']:.1f}%, max "
               f"{100 * sb['lut_max_rel_error']:.1f}%" if "lut_mean_rel_error" in sb else "")
        print(f"  {task:8s} n {sb['n']}, {sb['rounds']} rounds, {sb['min_ms']:.1f}-"
              f"{sb['max_ms']:.1f} ms, load {sb['load_average']:.1f}: {cells}{lut}")
    result["pass"] = all(r["pass"] for r in result["tasks"].values())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
