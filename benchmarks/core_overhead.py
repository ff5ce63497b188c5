"""Framework overhead of nasframe's search loop, side by side with Optuna.

Runs the same number of trials of a no-op search space and a no-op objective
in one process, three ways:

(a) ``nasframe``: the full loop (``run_experiment``): a one-decision space
    (``Integer("x", 0, HIGH)``, so random search never runs out) registered
    in-script through a plugin object, an objective that reads only the
    architecture (the model is never built), strategy ``random`` (the built-in),
    ``budget.trials = N``, executor ``inline``, references off, ``quiet=True``,
    and the SQLite trial store in a fresh temporary run directory;
(b) ``optuna-sqlite``: Optuna with ``sqlite:///<tmp>/optuna.db`` storage,
    ``RandomSampler(seed)``, one ``suggest_int("x", 0, HIGH)``, the same no-op
    value, ``study.optimize(n_trials=N, show_progress_bar=False)``;
(c) ``optuna-memory``: the same with Optuna's in-memory storage.

Each configuration runs R times (a fresh temporary directory each time, the
three interleaved so that drift hits them alike) after one small untimed
warm-up run of each (imports, first-use caches). The wall time covers setup
and the N trials: for nasframe, config validation + ``run_experiment``
(store creation, plugin resolution, the loop, the final front statistics);
for Optuna, ``create_study`` + ``optimize``. Reported: the median wall time,
trials per second (N / median), and nasframe's trials/s divided by each
Optuna variant's.

Target: nasframe at least 10x the trials/s of Optuna with SQLite storage
(both persist every trial to SQLite). The script prints PASS or BELOW TARGET
and exits 0 either way: it is a measurement, not an assertion.

``--scaling`` adds the per-trial overhead of the whole loop at run lengths of
10^2, 10^3 and 10^4 trials for strategies random, ens (NSGA-II, population 16),
optuna (its random sampler through the bridge) and nni (its Random tuner), and
Optuna with SQLite at the same lengths: the algorithm's own work per trial is
constant in all of them, so a growth of the ms/trial shows the core's (store
writes, history, strategy-state journal). Target: within 2x from 10^2 to 10^4, and
nasframe still >= 10x faster than Optuna + SQLite.

Usage::

    python benchmarks/core_overhead.py [--trials N] [--repeats R] [--high H]
                                       [--seed S] [--json PATH]
                                       [--scaling [100,1000,10000]] [--strategies random,ens,...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 10.0  # nasframe trials/s over optuna-sqlite trials/s
WARMUP_TRIALS = 5
SPACE_NAME = "bench_noop"
OBJECTIVE_NAME = "bench_noop"


# ----------------------------------------------------------- the no-op parts
def noop_value(x: int) -> float:
    """The 'objective': a cheap, deterministic function of the one decision."""
    return float(x % 997)


def _register_nasframe_plugin():
    """Register the no-op space and objective once per process, like any plugin."""
    import torch

    import nasframe
    from nasframe import Field, Integer, Objective, SearchSpace, hookimpl
    from nasframe.plugins import get_plugins

    plugins = get_plugins()
    if SPACE_NAME in plugins.search_spaces:
        return plugins

    class NoopSpace(SearchSpace):
        """One integer decision in [0, high]; builds an Identity (never built here)."""

        name = SPACE_NAME
        input_shape = (1,)

        class Params(nasframe.Params):
            high: int = Field(10**6, ge=0, strict=True)

        def decisions(self):
            return [Integer("x", 0, self.params.high)]

        def build(self, arch):
            return torch.nn.Identity()

    class NoopObjective(Objective):
        """A value read from the architecture; never touches ``candidate.model``."""

        name = OBJECTIVE_NAME
        direction = "min"
        kind = "proxy"
        backend = "python"
        cost = 0.0

        def evaluate(self, candidate, ctx):
            return noop_value(candidate.arch["x"])

    class _BenchPlugin:
        @hookimpl
        def register_search_spaces(self, registry):
            registry.add(NoopSpace)

        @hookimpl
        def register_objectives(self, registry):
            registry.add(NoopObjective)

    plugins.register(_BenchPlugin(), "nasframe-benchmarks", "0")
    if SPACE_NAME not in plugins.search_spaces or OBJECTIVE_NAME not in plugins.objectives:
        detail = "; ".join(f.error for f in plugins.failures) or "unknown reason"
        raise RuntimeError(f"could not register the benchmark plugin: {detail}")
    return plugins


# ------------------------------------------------------------------ runners
#: the strategies of the scaling table: the algorithm's own work is kept constant per trial
#: (random proposals; NSGA-II with a fixed population), so what grows is the core's
STRATEGIES = {
    "random": {"name": "random"},
    "ens": {"name": "ens", "params": {"population": 16}},
    "optuna": {"name": "optuna", "params": {"sampler": "random"}},
    "nni": {"name": "nni", "params": {"tuner": "Random"}},
}


def run_nasframe(n: int, high: int, seed: int, workdir: Path,
                 strategy: str = "random") -> tuple[float, int]:
    """(wall seconds, trials recorded) of one full nasframe run."""
    from nasframe.config import config_from_dict
    from nasframe.runner import run_experiment

    run_dir = workdir / "run"
    t0 = time.perf_counter()
    cfg = config_from_dict({
        "name": "core-overhead",
        "seed": seed,
        "search_space": {"name": SPACE_NAME, "params": {"high": high}},
        "objectives": [{"name": OBJECTIVE_NAME}],
        "strategy": STRATEGIES[strategy],
        "budget": {"trials": n},
        "executor": {"name": "inline"},
        "references": False,
    })
    summary = run_experiment(cfg, run_dir, quiet=True)
    wall = time.perf_counter() - t0
    return wall, summary.trials


def store_writes(run_dir: Path) -> dict[str, int]:
    """Bytes of strategy state the run's store holds now (the journal) and its size on disk."""
    db = sqlite3.connect(run_dir / "trials.db")
    try:
        state = db.execute("SELECT COALESCE(SUM(LENGTH(state)), 0) FROM strategy_journal").fetchone()[0]
    finally:
        db.close()
    return {"journal_bytes": int(state), "db_bytes": (run_dir / "trials.db").stat().st_size}


def scaling(sizes: list[int], strategies: list[str], high: int, seed: int,
            optuna_sqlite: bool = True) -> dict[str, Any]:
    """ms per trial of each strategy at each size (one run each), and Optuna + SQLite."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="nasframe-scaling-") as root:
        for strategy in strategies:
            for n in sizes:
                d = Path(root) / f"{strategy}-{n}"
                d.mkdir()
                wall, count = run_nasframe(n, high, seed, d, strategy)
                rows.append({"runner": f"nasframe {strategy}", "trials": n, "wall_s": wall,
                             "ms_per_trial": 1000 * wall / n, "recorded": count,
                             **store_writes(d / "run")})
                print(f"  nasframe {strategy:7s} {n:>6d} trials: {1000 * wall / n:8.3f} ms/trial",
                      file=sys.stderr, flush=True)
        if optuna_sqlite:
            for n in sizes:
                d = Path(root) / f"optuna-{n}"
                d.mkdir()
                wall, count = run_optuna(n, high, seed, d)
                rows.append({"runner": "optuna-sqlite", "trials": n, "wall_s": wall,
                             "ms_per_trial": 1000 * wall / n, "recorded": count})
                print(f"  optuna-sqlite   {n:>6d} trials: {1000 * wall / n:8.3f} ms/trial",
                      file=sys.stderr, flush=True)
    flat = {}
    for runner in dict.fromkeys(r["runner"] for r in rows):
        ms = [r["ms_per_trial"] for r in rows if r["runner"] == runner]
        flat[runner] = max(ms) / min(ms)
    vs = {}
    for n in sizes:
        opt = [r for r in rows if r["runner"] == "optuna-sqlite" and r["trials"] == n]
        mine = [r for r in rows if r["runner"] == "nasframe random" and r["trials"] == n]
        if opt and mine:
            vs[n] = opt[0]["ms_per_trial"] / mine[0]["ms_per_trial"]
    return {"rows": rows, "growth": flat, "random_vs_optuna_sqlite": vs}


def format_scaling(result: dict[str, Any]) -> str:
    sizes = sorted({r["trials"] for r in result["rows"]})
    lines = ["", "per-trial overhead (ms/trial) by run length; growth = max/min over the sizes "
             "(target <= 2x)",
             f"{'runner':<18}" + "".join(f"{n:>12,d}" for n in sizes) + f"{'growth':>9}"
             + f"{'journal KB':>12}"]
    for runner, growth in result["growth"].items():
        ms = {r["trials"]: r for r in result["rows"] if r["runner"] == runner}
        journal = ms[max(ms)].get("journal_bytes")
        lines.append(f"{runner:<18}" + "".join(f"{ms[n]['ms_per_trial']:>12.3f}" if n in ms
                                               else f"{'-':>12}" for n in sizes)
                     + f"{growth:>8.2f}x" + (f"{journal / 1024:>12.1f}" if journal is not None
                                             else f"{'-':>12}")
                     + ("" if runner == "optuna-sqlite" else
                        ("  PASS" if growth <= 2 else "  BELOW TARGET")))
    for n, ratio in result["random_vs_optuna_sqlite"].items():
        lines.append(f"nasframe random vs optuna-sqlite at {n:,d} trials: {ratio:.1f}x faster "
                     f"(target >= {TARGET_RATIO:g}x) -> {'PASS' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")
    return "\n".join(lines)


def _optuna_objective(high: int):
    def objective(trial) -> float:
        return noop_value(trial.suggest_int("x", 0, high))
    return objective


def run_optuna(n: int, high: int, seed: int, workdir: Path | None) -> tuple[float, int]:
    """(wall seconds, trials recorded); SQLite storage in ``workdir``, in memory if None."""
    import optuna

    # the URL is what optuna.create_study(storage="sqlite:///...") turns into an RDBStorage;
    # built here so that its engine can be disposed of before the directory goes
    t0 = time.perf_counter()
    rdb = None if workdir is None else optuna.storages.RDBStorage(f"sqlite:///{workdir / 'optuna.db'}")
    study = optuna.create_study(storage=rdb, sampler=optuna.samplers.RandomSampler(seed=seed),
                                direction="minimize", study_name="core-overhead")
    study.optimize(_optuna_objective(high), n_trials=n, show_progress_bar=False)
    wall = time.perf_counter() - t0
    count = len(study.get_trials(deepcopy=False))
    if rdb is not None:
        rdb.engine.dispose()
    return wall, count


BENCHES = {
    "nasframe": lambda n, high, seed, d: run_nasframe(n, high, seed, d),
    "optuna-sqlite": lambda n, high, seed, d: run_optuna(n, high, seed, d),
    "optuna-memory": lambda n, high, seed, d: run_optuna(n, high, seed, None),
}


# ------------------------------------------------------------- facts, output
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_facts() -> dict[str, Any]:
    import numpy
    import optuna
    import torch

    import nasframe

    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "nasframe": getattr(nasframe, "__version__", "?"),
    }


def format_report(result: dict[str, Any]) -> str:
    cfg, facts = result["config"], result["machine"]
    lines = [
        "nasframe core overhead: no-op space and objective, "
        f"{cfg['trials']} trials x {cfg['repeats']} repeats (median), decision range 0..{cfg['high']}",
        f"machine: {facts['cpu']}, {facts['threads']} threads, {facts['platform']}",
        f"versions: python {facts['python']}, torch {facts['torch']}, optuna {facts['optuna']}, "
        f"numpy {facts['numpy']}, sqlite {facts['sqlite']}, nasframe {facts['nasframe']}",
        "",
        f"{'runner':<15} {'wall s (median)':>15} {'min':>9} {'max':>9} {'trials/s':>11} {'ms/trial':>9}",
        "-" * 73,
    ]
    for row in result["rows"]:
        lines.append(f"{row['name']:<15} {row['wall_s']:>15.3f} {min(row['walls']):>9.3f} "
                     f"{max(row['walls']):>9.3f} {row['trials_per_s']:>11.1f} "
                     f"{1000 * row['wall_s'] / cfg['trials']:>9.3f}")
    r = result["ratios"]
    lines += [
        "",
        f"nasframe / optuna-sqlite (trials/s): {r['nasframe/optuna-sqlite']:.2f}x",
        f"nasframe / optuna-memory (trials/s): {r['nasframe/optuna-memory']:.2f}x",
        f"target: nasframe >= {TARGET_RATIO:g}x optuna-sqlite -> "
        + ("PASS" if result["pass"] else "BELOW TARGET"),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=500, help="trials per run (default 500)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (default 3; median)")
    p.add_argument("--high", type=int, default=10**6,
                   help="upper bound of the one integer decision (default 10**6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--scaling", metavar="N,N,...", nargs="?", const="100,1000,10000",
                   help="also the per-trial overhead at these run lengths (default "
                        "100,1000,10000) for each of --strategies, and Optuna + SQLite")
    p.add_argument("--strategies", default="random,ens,optuna,nni",
                   help="strategies of the scaling table (default random,ens,optuna,nni)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.repeats < 1 or args.high < 1:
        p.error("--trials, --repeats and --high must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, return the results (also written with --json)."""
    args = parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    _register_nasframe_plugin()

    walls: dict[str, list[float]] = {name: [] for name in BENCHES}
    counts: dict[str, list[int]] = {name: [] for name in BENCHES}
    with tempfile.TemporaryDirectory(prefix="nasframe-bench-") as root:
        root_path = Path(root)
        if not args.no_warmup:
            for name, bench in BENCHES.items():
                d = root_path / f"warmup-{name}"
                d.mkdir()
                bench(min(WARMUP_TRIALS, args.trials), args.high, args.seed, d)
        for r in range(args.repeats):
            for name, bench in BENCHES.items():
                d = root_path / f"r{r}-{name}"
                d.mkdir()
                wall, count = bench(args.trials, args.high, args.seed + r, d)
                walls[name].append(wall)
                counts[name].append(count)

    rows = []
    for name in BENCHES:
        med = statistics.median(walls[name])
        rows.append({"name": name, "wall_s": med, "walls": walls[name],
                     "trials_per_s": args.trials / med, "trials_recorded": counts[name]})
    tps = {row["name"]: row["trials_per_s"] for row in rows}
    ratios = {"nasframe/optuna-sqlite": tps["nasframe"] / tps["optuna-sqlite"],
              "nasframe/optuna-memory": tps["nasframe"] / tps["optuna-memory"]}
    result = {
        "benchmark": "core_overhead",
        "config": {"trials": args.trials, "repeats": args.repeats, "high": args.high,
                   "seed": args.seed, "warmup_trials": 0 if args.no_warmup else WARMUP_TRIALS},
        "machine": machine_facts(),
        "rows": rows,
        "ratios": ratios,
        "target": {"nasframe/optuna-sqlite": TARGET_RATIO},
        "pass": ratios["nasframe/optuna-sqlite"] >= TARGET_RATIO,
    }
    for row in rows:
        if any(c != args.trials for c in row["trials_recorded"]):
            print(f"warning: {row['name']} recorded {row['trials_recorded']} trials, "
                  f"expected {args.trials}", file=sys.stderr)
    print(format_report(result))
    if args.scaling:
        sizes = [int(v) for v in args.scaling.split(",") if v.strip()]
        strategies = [v.strip() for v in args.strategies.split(",") if v.strip()]
        result["scaling"] = scaling(sizes, strategies, args.high, args.seed)
        result["scaling"]["load"] = os.getloadavg()[0]
        print(format_scaling(result["scaling"]))
        print(f"(load average {result['scaling']['load']:.1f} on {os.cpu_count()} cores)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {path}")
    return result


if __name__ == "__main__":
    main()  # exit status 0 whatever the figures: a measurement, not an assertion
