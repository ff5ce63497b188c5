"""ENS report: per restoration task, the teacher against the ENS pick, and search efficiency.

For each task (``denoise``, ``deblur``, ``derain``) it uses the run of
``examples/ens_<task>.yaml`` in ``<runs>/ens_<task>`` (running, or resuming,
it first when it is missing or unfinished), then prints:

1. **Teacher vs pick**: the teacher's PSNR and the ENS pick's (the model the
   penalised rule PSNR - lambda x transformers chose from the front), the
   pick's transformer count, and the CPU latency of both at
   ``--size`` x ``--size`` (256 by default), measured side by side in this
   process (calls interleaved, median, ``--threads`` threads) with the ratio
   teacher / pick (the speed-up).
2. **Search efficiency at stage granularity**: every architecture of the same
   network at ``granularity: stage`` (2^8 = 256 hybrids, assembled from the
   same cached bank) is scored once for PSNR; that exhaustive table gives the
   true front. Then ``ens`` and ``random`` each get the same budget of ``--budget``
   evaluations (answered from the table, both told the two reference
   architectures first, as a run does), over ``--seeds`` seeds; reported is the
   hypervolume of each strategy's front divided by the exhaustive front's
   (``ens`` with the run's strategy params, e.g. its population)
   (mean, min and max over seeds). The reference point is fixed per task: the
   worst PSNR of the table minus 0.1 dB, and the slot count plus 1. Several
   budgets may be given (``--budget 16 32 64``).
3. **Full size**: the latency at ``--size`` of the ``restormer`` preset (44
   blocks, dim 48; random weights, which do not change the time) all
   transformer against all SSM, side by side: what swapping every block buys at
   the published size (``--no-full`` skips it).

Usage::

    python benchmarks/ens_report.py [--tasks denoise deblur derain] [--runs runs]
                                    [--budget 16 32 64] [--seeds 10] [--size 256]
                                    [--threads 2] [--repeats 5] [--no-full] [--json PATH]

It prints its tables and exits 0: a measurement, not an assertion.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe.candidate import Candidate  # noqa: E402
from nasframe.config import config_from_dict  # noqa: E402
from nasframe.experiment import Experiment, trial_seed  # noqa: E402
from nasframe.export import export_run  # noqa: E402
from nasframe.pareto import hypervolume  # noqa: E402
from nasframe.plugins import get_plugins  # noqa: E402
from nasframe.progress import step_progress  # noqa: E402
from nasframe.results import load_run  # noqa: E402
from nasframe.runner import resume_run, run_experiment  # noqa: E402
from nasframe.simulate import simulate  # noqa: E402
from nasframe.trial import ObjectiveSpec, Problem  # noqa: E402

TASKS = ("denoise", "deblur", "derain")


def ensure_run(task: str, runs: Path) -> Path:
    """The finished run of examples/ens_<task>.yaml, made or completed when needed."""
    example = ROOT / "examples" / f"ens_{task}.yaml"
    run_dir = runs / f"ens_{task}"
    text = example.read_text()
    if (run_dir / "trials.db").exists():
        print(f"[{task}] resuming/reading {run_dir}")
        resume_run(run_dir, quiet=False)
    else:
        print(f"[{task}] running {example.relative_to(ROOT)} into {run_dir}")
        run_experiment(config_from_dict(yaml.safe_load(text)), run_dir, quiet=False, config_text=text)
    export_run(run_dir)
    return run_dir


def _latency(models: dict[str, torch.nn.Module], size: int, repeats: int) -> dict[str, float]:
    x = torch.rand(1, 3, size, size)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m.eval()(x)                      # warm-up (numba compilation, allocator)
        for _ in range(repeats):
            for k, m in models.items():
                start = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def teacher_vs_pick(task: str, run_dir: Path, size: int, repeats: int) -> dict:
    run = load_run(run_dir)
    a = run.analysis
    pick = run.pick_result
    teacher = next(t for t in a.trials if t.origin == "reference:teacher")
    exp = run.experiment()
    ctx = exp.context(run_dir, quiet=True)
    exp.prepare(ctx)
    models = {"teacher": Candidate(exp.space, teacher.arch).model,
              "pick": Candidate(exp.space, pick.trial.arch).model}
    lat = _latency(models, size, repeats)
    return {"task": task, "teacher_psnr": teacher.values["psnr"],
            "pick_psnr": pick.trial.values["psnr"],
            "teacher_transformers": teacher.values["transformer_count"],
            "pick_transformers": pick.trial.values["transformer_count"],
            "pick_rule": pick.rule, "pick_trial": pick.trial.number,
            "teacher_ms": lat["teacher"], "pick_ms": lat["pick"],
            "speedup": lat["teacher"] / lat["pick"], "size": size}


def exhaustive_table(run_dir: Path) -> tuple[Experiment, dict[str, float]]:
    """PSNR of every stage-granularity hybrid, assembled from the run's cached bank.

    The experiment keeps the run's strategy settings (``ens`` population, ...)."""
    cfg = yaml.safe_load(json.dumps(load_run(run_dir).config_dict))
    cfg["search_space"]["params"]["granularity"] = "stage"
    cfg["objectives"] = [{"name": "psnr"}, {"name": "transformer_count"}]
    exp = Experiment.from_config(config_from_dict(cfg))
    ctx = exp.context(run_dir, quiet=True)     # the same cache: teacher and bank are loaded
    exp.prepare(ctx)
    psnr = exp.objectives["psnr"]
    table = {}
    archs = list(exp.space.enumerate())
    with step_progress(ctx.console) as progress:
        bar = progress.add_task("exhaustive", total=len(archs), info="")
        for arch in archs:
            table[arch.id] = psnr(Candidate(exp.space, arch, trial_seed(0, arch)), ctx)[0]
            progress.update(bar, advance=1)
    return exp, table


def search_efficiency(exp: Experiment, table: dict[str, float], budget: int, seeds: int) -> dict:
    space = exp.space
    problem = Problem(space, (ObjectiveSpec("psnr", "max"), ObjectiveSpec("transformer_count", "min")), ())
    dirs = ["max", "min"]
    all_archs = list(space.enumerate())
    values = np.array([[table[a.id], space.transformer_count(a)] for a in all_archs])
    ref = np.array([-(values[:, 0].min() - 0.1), len(space.slots) + 1.0])
    hv_true = hypervolume(values, dirs, ref)
    plugins = get_plugins()

    def evaluate(a):
        return {"psnr": table[a.id], "transformer_count": space.transformer_count(a)}

    out: dict[str, list[float]] = {}
    for name in ("ens", "random"):
        ratios = []
        for seed in range(seeds):
            params = exp.cfg.strategy.params if name == exp.cfg.strategy.name else {}
            trials = simulate(
                lambda h: plugins.strategies.create(name, params, problem=problem, seed=seed,
                                                    history=h),
                problem, evaluate, budget, batch=4, references=space.reference_architectures())
            found = [[t.values["psnr"], t.values["transformer_count"]] for t in trials]
            ratios.append(hypervolume(np.array(found), dirs, ref) / hv_true)
        out[name] = ratios
    return {"budget": budget, "space_size": len(all_archs), "seeds": seeds,
            "hv_exhaustive": hv_true,
            **{f"{k}_hv_ratio": {"mean": float(np.mean(v)), "min": float(np.min(v)),
                                 "max": float(np.max(v))} for k, v in out.items()}}


def full_size(size: int, repeats: int) -> dict:
    """Latency of the restormer preset, all transformer against all SSM."""
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

    space = HybridUNetSpace(preset="restormer", granularity="stage")
    torch.manual_seed(0)
    models = {k: space.build(a) for k, a in space.reference_architectures().items()}
    lat = _latency(models, size, repeats)
    return {"size": size, "teacher_ms": lat["teacher"], "all_ssm_ms": lat["all_ssm"],
            "speedup": lat["teacher"] / lat["all_ssm"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--budget", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-full", action="store_true", help="skip the restormer-size latency")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, eff = [], []
    for task in args.tasks:
        run_dir = ensure_run(task, args.runs)
        rows.append(teacher_vs_pick(task, run_dir, args.size, args.repeats))
        exp, table = exhaustive_table(run_dir)
        for budget in args.budget:
            eff.append({"task": task, **search_efficiency(exp, table, budget, args.seeds)})
    full = None if args.no_full else full_size(args.size, max(3, args.repeats // 2))

    print(f"\nTeacher vs ENS pick (CPU latency at {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.repeats}, interleaved)")
    print(f"  {'task':8s} {'teacher dB':>10s} {'pick dB':>8s} {'transformers':>13s} "
          f"{'teacher ms':>10s} {'pick ms':>8s} {'speed-up':>8s}")
    for r in rows:
        print(f"  {r['task']:8s} {r['teacher_psnr']:10.2f} {r['pick_psnr']:8.2f} "
              f"{int(r['pick_transformers']):>6d} of {int(r['teacher_transformers']):<4d} "
              f"{r['teacher_ms']:10.1f} {r['pick_ms']:8.1f} {r['speedup']:7.2f}x")
    print(f"\nSearch efficiency at stage granularity: hypervolume / exhaustive front's, "
          f"{args.seeds} seeds (mean [min, max])")
    print(f"  {'task':8s} {'space':>6s} {'budget':>6s} {'ens':>22s} {'random':>22s} {'ens/random':>10s}")
    for e in eff:
        fmt = "{mean:.3f} [{min:.3f}, {max:.3f}]"
        ratio = e["ens_hv_ratio"]["mean"] / e["random_hv_ratio"]["mean"]
        print(f"  {e['task']:8s} {e['space_size']:6d} {e['budget']:6d} "
              f"{fmt.format(**e['ens_hv_ratio']):>22s} {fmt.format(**e['random_hv_ratio']):>22s} "
              f"{ratio:10.3f}")
    if full:
        print(f"\nFull size (restormer preset, {full['size']}x{full['size']}): all transformer "
              f"{full['teacher_ms']:.0f} ms, all SSM {full['all_ssm_ms']:.0f} ms, "
              f"speed-up {full['speedup']:.2f}x")
    result = {"teacher_vs_pick": rows, "search_efficiency": eff, "full_size": full,
              "threads": args.threads}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
