"""nasframe's strategies against NNI's and Optuna's, side by side on two exhaustively scored spaces.

Every method searches the same precomputed table (``nasframe.simulate``: the strategy is
driven as the runner drives it, each evaluation is a look-up), so only the search is
compared, and only distinct valid evaluations count toward a budget:

* ``hybrid``: the ``hybrid_unet`` space of ``examples/ens_denoise.yaml`` at stage
  granularity (8 stages: 2^8 = 256 hybrids of transformer and SSM blocks), PSNR
  (max, measured on held-out photos with the example's teacher and distilled bank)
  against the transformer count (min); the two reference architectures (all
  transformer, all SSM) are told first, as a run does. Reported: the **hypervolume
  ratio**, the front found over the exhaustive front's (reference point: the table's
  worst PSNR - 0.1 dB and the stage count + 1; 1.0 = the whole front found).
* ``sd_unet``: the 288-member ``sd_unet`` space of ``benchmarks/eps_bo_vs_peers.py``
  (2^18 decision combinations, most invalid), GMACs (min) subject to
  ``fidelity >= eps`` (eps: the 0.8 quantile of the table's fidelity). Reported: the
  **best feasible GMACs over the optimum** (1.0 = the optimum found; a search with
  nothing feasible scores the table's largest GMACs).

Methods (each a nasframe strategy plugin with the same defaults a user gets):

| method | strategy and params |
|---|---|
| ``ens`` | ``ens`` (NSGA-II over the decisions, pymoo), population 8 |
| ``eps_bo`` | ``eps_bo`` (epsilon-constrained BO, botorch), ``minimise: gmacs``, ``bounds: {fidelity: eps}``, ``n_initial: 5``; hybrid: ``minimise: transformer_count``, ``bounds: {psnr: <median PSNR>}`` |
| ``random`` | ``random`` |
| ``nni-tpe`` / ``nni-evolution`` | ``nni`` with ``tuner: TPE`` / ``Evolution`` (``population_size: 8``); hybrid: ``weights: {psnr: 1, transformer_count: 0.1}`` (ENS's pick rule), sd_unet: ``objective: gmacs`` with the constraint as a penalty |
| ``optuna-tpe`` / ``optuna-nsga2`` | ``optuna`` with ``sampler: tpe`` / ``nsga2`` (``population_size: 8``); both objectives (hybrid) or GMACs with the fidelity constraint (sd_unet) |

For each space, method and seed (``--seeds``), one search of ``max(--budget)``
evaluations is run in batches of 4 (hybrid, like ``ens_report``) or 1 (sd_unet), and
the score is read after the first N evaluations for every N in ``--budget``. Also the
**overhead per proposal**: the wall time of the strategy's ask and tell calls divided by
the evaluations (look-ups excluded). The last columns are each method's mean score
divided by ``ens``'s (hybrid) or ``eps_bo``'s (sd_unet): above 1 the method did better
on hypervolume, below 1 better on GMACs ratio... see the printed note.

Tables: the hybrid table (PSNR of 256 hybrids) needs the example's teacher and bank,
trained on first use (about 10 minutes on 2 CPU cores; ``--hybrid-run DIR`` reuses a
run's cache); the sd_unet table is shared with ``eps_bo_vs_peers.py`` (2-3 minutes).
Both are cached as JSON under ``--cache``.

Usage::

    python benchmarks/strategies_vs_peers.py [--budget 16 32 64] [--seeds 10]
        [--spaces hybrid sd_unet] [--methods ...] [--cache benchmarks/.cache]
        [--hybrid-run DIR] [--json PATH] [--quick]

``--quick``: budget 16, 2 seeds. It prints its tables and exits 0: a measurement.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe.architecture import Architecture
from nasframe.context import content_hash
from nasframe.history import TrialHistory
from nasframe.pareto import hypervolume
from nasframe.plugins import get_plugins
from nasframe.simulate import finished_trial
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial

METHODS = ("ens", "eps_bo", "random", "nni-tpe", "nni-evolution", "optuna-tpe", "optuna-nsga2")
SPACES = ("hybrid", "sd_unet")
BUDGETS = (16, 32, 64)
HYBRID_CONFIG = ROOT / "examples" / "ens_denoise.yaml"
TABLE_VERSION = 1
#: sd_unet: the fidelity bound at this quantile of the table's fidelity
SD_QUANTILE = 0.8
#: the weight of the transformer count in the scalar NNI tunes on the hybrid space
HYBRID_PENALTY = 0.1


# ------------------------------------------------------------------ tables
class Bench:
    """A space, its problem, the table of values of every valid architecture and how to
    score a search: ``score(trials) -> float`` (higher is better for hybrid: a hypervolume
    ratio; lower for sd_unet: best feasible / optimum)."""

    def __init__(self, name: str, space, problem: Problem, table: dict[str, dict[str, float]],
                 score: Callable[[list[Trial]], float], higher: bool, batch: int,
                 references: dict[str, Architecture] | None, params: dict[str, dict[str, Any]],
                 note: str):
        self.name, self.space, self.problem, self.table = name, space, problem, table
        self.score, self.higher, self.batch, self.references = score, higher, batch, references
        self.params, self.note = params, note


def _cached(cache: Path | None, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict:
    if cache is None:
        return build()
    path = Path(cache) / f"strategies_vs_peers-{content_hash(key)}.json"
    if path.exists():
        return json.loads(path.read_text())
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return data


def hybrid_table(cache: Path | None, run_dir: Path | None, teacher_steps: int | None = None,
                 distill_steps: int | None = None) -> tuple[Any, dict[str, float]]:
    """PSNR of every stage-granularity hybrid of the example's network (as ens_report);
    ``teacher_steps``/``distill_steps`` override the example's training steps."""
    import tempfile

    import torch
    import yaml

    from nasframe.candidate import Candidate
    from nasframe.config import config_from_dict
    from nasframe.experiment import Experiment, trial_seed

    cfg = yaml.safe_load(HYBRID_CONFIG.read_text())
    sp = cfg["search_space"]["params"]
    sp["granularity"] = "stage"
    if teacher_steps is not None:
        sp["teacher"]["steps"] = teacher_steps
    if distill_steps is not None:
        sp["distill"]["steps"] = distill_steps
    cfg["objectives"] = [{"name": "psnr"}, {"name": "transformer_count"}]
    exp = Experiment.from_config(config_from_dict(cfg))
    key = {"benchmark": "strategies_vs_peers", "table": "hybrid", "version": TABLE_VERSION,
           "space": cfg["search_space"], "torch": torch.__version__.split("+")[0]}

    def build() -> dict[str, Any]:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ctx = exp.context(run_dir or Path(tmp), quiet=True)
            print("[hybrid] teacher and bank (trained unless cached)...", file=sys.stderr)
            exp.prepare(ctx)
            psnr = exp.objectives["psnr"]
            rows = {}
            archs = list(exp.space.enumerate())
            for k, arch in enumerate(archs):
                rows[arch.id] = float(psnr(Candidate(exp.space, arch, trial_seed(0, arch)), ctx)[0])
                if (k + 1) % 32 == 0:
                    print(f"[hybrid] {k + 1}/{len(archs)} ({time.perf_counter() - start:.0f} s)",
                          file=sys.stderr)
        return {"psnr": rows, "seconds": time.perf_counter() - start}

    return exp.space, _cached(cache, key, build)["psnr"]


def sd_unet_table(cache: Path | None):
    """The 288-member sd_unet table of eps_bo_vs_peers.py (built and cached there)."""
    spec = importlib.util.spec_from_file_location("nasframe_bench_eps_bo_vs_peers",
                                                  ROOT / "benchmarks" / "eps_bo_vs_peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    space = peers.make_space(peers.SPACE_PARAMS)
    return space, peers.build_table(space, peers.SPACE_PARAMS, cache)


def hybrid_bench(space, psnr: dict[str, float]) -> Bench:
    table = {i: {"psnr": v, "transformer_count": float(space.transformer_count(Architecture(a)))}
             for i, v, a in ((a.id, psnr[a.id], a.to_dict()) for a in space.enumerate())}
    problem = Problem(space, (ObjectiveSpec("psnr", "max"), ObjectiveSpec("transformer_count", "min")))
    dirs = ["max", "min"]
    vals = np.array([[v["psnr"], v["transformer_count"]] for v in table.values()])
    ref = np.array([-(vals[:, 0].min() - 0.1), len(space.decisions()) + 1.0])
    hv_true = hypervolume(vals, dirs, ref)

    def score(trials: list[Trial]) -> float:
        done = [[t.values["psnr"], t.values["transformer_count"]] for t in trials
                if t.status == "complete"]
        return hypervolume(np.array(done), dirs, ref) / hv_true if done else 0.0

    median = float(np.median(vals[:, 0]))
    params = {"ens": {"population": 8},
              "eps_bo": {"minimise": "transformer_count", "bounds": {"psnr": median},
                         "n_initial": 5},
              "random": {},
              "nni-tpe": {"tuner": "TPE", "weights": {"psnr": 1.0, "transformer_count": HYBRID_PENALTY}},
              "nni-evolution": {"tuner": "Evolution", "tuner_kwargs": {"population_size": 8},
                                "weights": {"psnr": 1.0, "transformer_count": HYBRID_PENALTY}},
              "optuna-tpe": {"sampler": "tpe"},
              "optuna-nsga2": {"sampler": "nsga2", "sampler_kwargs": {"population_size": 8}}}
    return Bench("hybrid", space, problem, table, score, True, 4,
                 space.reference_architectures(), params,
                 f"hypervolume / exhaustive front's ({len(table)} architectures); higher is better")


def sd_unet_bench(space, t) -> Bench:
    table = {a.id: {"gmacs": float(g), "fidelity": float(f)}
             for a, g, f in zip(t.archs, t.gmacs, t.fidelity)}
    eps = float(np.quantile(t.fidelity, SD_QUANTILE, method="lower"))
    feasible = [v["gmacs"] for v in table.values() if v["fidelity"] >= eps]
    optimum, worst = min(feasible), float(max(t.gmacs))
    problem = Problem(space, (ObjectiveSpec("gmacs", "min"), ObjectiveSpec("fidelity", "max")),
                      (Constraint("fidelity", ">=", eps),))
    one = Problem(space, (ObjectiveSpec("gmacs", "min"),), (Constraint("fidelity", ">=", eps),))

    def score(trials: list[Trial]) -> float:
        best = [t.values["gmacs"] for t in trials
                if t.status == "complete" and table[t.arch.id]["fidelity"] >= eps]
        return (min(best) if best else worst) / optimum

    params = {"ens": {"population": 8},
              "eps_bo": {"minimise": "gmacs", "bounds": {"fidelity": eps}, "n_initial": 5},
              "random": {},
              "nni-tpe": {"tuner": "TPE", "objective": "gmacs"},
              "nni-evolution": {"tuner": "Evolution", "tuner_kwargs": {"population_size": 8},
                                "objective": "gmacs"},
              "optuna-tpe": {"sampler": "tpe"},
              "optuna-nsga2": {"sampler": "nsga2", "sampler_kwargs": {"population_size": 8}}}
    bench = Bench("sd_unet", space, problem, table, score, False, 1, None, params,
                  f"best feasible GMACs / optimum (fidelity >= {eps:.4g}, {len(feasible)} of "
                  f"{len(table)} feasible); lower is better")
    bench.single = one          # single-objective problem for the scalar methods
    return bench


# ------------------------------------------------------------------ searches
def problem_for(bench: Bench, method: str) -> Problem:
    if bench.name == "sd_unet" and method == "optuna-tpe":
        return bench.single     # GMACs only, under the fidelity constraint
    return bench.problem


def search(bench: Bench, method: str, seed: int, budget: int) -> tuple[list[Trial], float]:
    """One search: the trials (references first) and the strategy's own wall time."""
    plugins = get_plugins()
    name = method.split("-")[0]
    problem = problem_for(bench, method)
    history = TrialHistory()
    strategy = plugins.strategies.create(name, dict(bench.params[method]), problem=problem,
                                         seed=seed, history=history)
    evaluate = bench.table.__getitem__
    out: list[Trial] = []
    spent = 0.0

    def run(archs: list[tuple[Architecture, str]]) -> None:
        nonlocal spent
        start = len(out)
        history.record(Trial(start + i, a, "running", origin=o) for i, (a, o) in enumerate(archs))
        done = [finished_trial(problem, start + i, a, lambda x: evaluate(x.id), o)
                for i, (a, o) in enumerate(archs)]
        history.record(done)
        t0 = time.perf_counter()
        strategy.tell(done)
        spent += time.perf_counter() - t0
        out.extend(done)

    if bench.references:
        run([(a, f"reference:{k}") for k, a in bench.references.items()])
    n = 0
    while n < budget:
        t0 = time.perf_counter()
        asked = strategy.ask(min(bench.batch, budget - n))
        spent += time.perf_counter() - t0
        if not asked:
            break
        run([(a, "strategy") for a in asked])
        n += len(asked)
    return out, spent


_BENCH: Bench | None = None     # the bench of the forked workers (--jobs)


def _one(job: tuple[str, int, int]) -> tuple[list[Trial], float]:
    return search(_BENCH, *job)


def compare(bench: Bench, methods: Sequence[str], budgets: Sequence[int], seeds: int,
            progress: Callable[[str], None] | None = None, jobs: int = 1) -> dict[str, Any]:
    """Every method's scores after each budget, per seed, and its overhead per proposal.
    ``jobs`` > 1 runs the searches in that many forked processes."""
    global _BENCH
    top = max(budgets)
    todo = [(m, seed, top) for m in methods for seed in range(seeds)]
    todo.sort(key=lambda job: job[0] != "eps_bo")      # the slowest first
    if jobs > 1:
        import multiprocessing

        _BENCH = bench
        done = {}
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for job, res in zip(todo, pool.imap(_one, todo, chunksize=1)):
                done[job] = res
                if progress:
                    trials, spent = res
                    own = [t for t in trials if not t.origin.startswith("reference:")]
                    refs = [t for t in trials if t.origin.startswith("reference:")]
                    progress(f"[{bench.name}] {job[0]} seed {job[1]}: " + ", ".join(
                        f"N={b} {bench.score(refs + own[:b]):.4f}" for b in budgets)
                        + f"; {1000 * spent / max(len(own), 1):.1f} ms/proposal")
        _BENCH = None
    else:
        done = {job: search(bench, *job) for job in todo}
    out: dict[str, Any] = {}
    for method in methods:
        scores: dict[int, list[float]] = {b: [] for b in budgets}
        overhead, evaluated = [], []
        for seed in range(seeds):
            trials, spent = done[(method, seed, top)]
            refs = [t for t in trials if t.origin.startswith("reference:")]
            own = [t for t in trials if not t.origin.startswith("reference:")]
            ids = [t.arch.id for t in own]
            assert len(ids) == len(set(ids)), f"{method} evaluated an architecture twice"
            for b in budgets:
                scores[b].append(bench.score(refs + own[:b]))
            overhead.append(1000 * spent / max(len(own), 1))
            evaluated.append(len(own))
        out[method] = {"scores": {str(b): v for b, v in scores.items()},
                       "ms_per_proposal": overhead, "evaluated": evaluated}
        if progress:
            progress(f"[{bench.name}] {method}: " + ", ".join(
                f"N={b} {statistics.mean(v):.3f}" for b, v in scores.items())
                + f"; {statistics.median(overhead):.1f} ms/proposal")
    return out


def report(bench: Bench, result: dict[str, Any], budgets: Sequence[int], seeds: int) -> None:
    base = "ens" if bench.name == "hybrid" else "eps_bo"
    if base not in result:
        base = next(iter(result))
    print(f"\n## {bench.name}: {bench.note}; mean [min-max] over {seeds} seeds")
    head = ["method"] + [f"N={b}" for b in budgets] + [f"vs {base} N={b}" for b in budgets] \
        + ["ms/proposal"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    means = {m: {b: statistics.mean(r["scores"][str(b)]) for b in budgets} for m, r in result.items()}
    for m, r in result.items():
        cells = [m]
        for b in budgets:
            v = r["scores"][str(b)]
            cells.append(f"{statistics.mean(v):.3f} [{min(v):.3f}-{max(v):.3f}]")
        for b in budgets:
            cells.append(f"{means[m][b] / means[base][b]:.3f}" if means[base][b] else "n/a")
        cells.append(f"{statistics.median(r['ms_per_proposal']):.1f}")
        if min(r["evaluated"]) < max(budgets):
            cells[0] += f" (stopped at {min(r['evaluated'])})"
        print("| " + " | ".join(cells) + " |")
    better = "higher" if bench.higher else "lower"
    print(f"(ratio vs {base}: the method's mean over {base}'s; {better} is better; "
          "ms/proposal: median over seeds of the strategy's ask+tell time per evaluation)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None, help="default 10 (--quick: 2)")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--hybrid-run", type=Path, default=None,
                        help="a run directory of examples/ens_denoise.yaml whose cache to reuse")
    parser.add_argument("--hybrid-teacher-steps", type=int, default=None,
                        help="override the example's teacher training steps (default: 1500)")
    parser.add_argument("--hybrid-distill-steps", type=int, default=None,
                        help="override the example's distillation steps per block (default: 400)")
    parser.add_argument("--tables-only", action="store_true", help="build the tables, no search")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1,
                        help="searches run in this many processes (overheads then include "
                             "their contention)")
    parser.add_argument("--quick", action="store_true", help="budget 16, 2 seeds")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    budgets = sorted(set(args.budget or ([16] if args.quick else list(BUDGETS))))
    seeds = args.seeds or (2 if args.quick else 10)
    import torch

    torch.set_num_threads(args.threads)
    missing = [m for m in args.methods
               if get_plugins().strategies.entry(m.split("-")[0]).missing()]
    methods = [m for m in args.methods if m not in missing]
    if missing:
        print(f"(skipped, not installed: {', '.join(missing)})")
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr))
    result: dict[str, Any] = {"budgets": budgets, "seeds": seeds, "spaces": {}}
    start = time.perf_counter()
    if args.jobs > 1 and not args.tables_only:
        # build missing tables in a child process first: the searches run in forked
        # workers, and a parent that has run torch's OpenMP thread pool cannot fork safely
        # (libgomp is not fork-safe: the children hang at their first parallel region)
        import subprocess

        cmd = [sys.executable, __file__, "--tables-only", "--cache", str(args.cache),
               "--threads", str(args.threads), "--spaces", *args.spaces]
        for flag, value in (("--hybrid-run", args.hybrid_run),
                            ("--hybrid-teacher-steps", args.hybrid_teacher_steps),
                            ("--hybrid-distill-steps", args.hybrid_distill_steps)):
            if value is not None:
                cmd += [flag, str(value)]
        subprocess.run(cmd, check=True)
    for name in args.spaces:
        if name == "hybrid":
            bench = hybrid_bench(*hybrid_table(args.cache, args.hybrid_run,
                                               args.hybrid_teacher_steps,
                                               args.hybrid_distill_steps))
        else:
            bench = sd_unet_bench(*sd_unet_table(args.cache))
        if args.tables_only:
            continue
        res = compare(bench, methods, budgets, seeds, progress, args.jobs)
        report(bench, res, budgets, seeds)
        result["spaces"][name] = {"note": bench.note, "methods": res}
    result["wall_s"] = time.perf_counter() - start
    print(f"\n(wall time {result['wall_s']:.0f} s, tables included when not cached; "
          f"{args.jobs} search process(es), {args.threads} torch threads)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
