"""``eps_bo`` against random search and Optuna's constrained TPE, on an exhaustively scored space.

The problem is TOC-SR's: the fewest GMACs subject to ``fidelity >= epsilon``.
The space is a small ``sd_unet`` one (``tiny`` preset, pairs ``full`` or
``removed``, level widths 1.0 or 0.5, the mid block kept, the innermost level
removed: 288 valid architectures out of 2^18 decision combinations), small
enough to score every architecture once (GMACs of one U-Net step, and
fidelity without distillation on 4 fixed inputs): that table is the ground
truth. It is cached as JSON under ``--cache`` (keyed by a hash of the space and
objective settings and the torch version, not by code: delete it after changing
``sd_unet`` or the objectives), so only the first run pays for it (about 2-3
minutes on 2 CPU cores).

For each epsilon (quantiles of the table's fidelity, ``--quantiles``), each
seed and each method, one search of ``max(--budget)`` evaluations is answered
from the table, and the best feasible GMACs found after the first ``N``
evaluations is read off for every ``N`` in ``--budget``:

* ``eps_bo``: the plugin, ``minimise: gmacs``, ``bounds: {fidelity: eps}``,
  ``n_initial: --n-initial``, other params at their defaults;
* ``random``: the plugin (uniform over valid architectures, no repeats);
* ``optuna``: ``TPESampler(constraints_func=..., seed=seed)`` with every
  decision of the space as ``suggest_categorical``; the constraint value is
  ``eps - fidelity`` (feasible when <= 0); the value is GMACs (minimised);
* ``optuna-levels``: the same sampler on a reparametrisation in which each
  level's pair decisions are one categorical over that level's valid
  assignments (the valid set is checked to be their product) and the other
  decisions stay as they are, so that every suggestion is valid: what an
  Optuna user would write for this space, and the same knowledge of the
  space that ``space.sample`` (used by ``random`` and by ``eps_bo``'s initial
  design) has.

Fair-budget rule: only valid, distinct evaluations count toward ``N``, for every
method. Every method is driven one architecture at a time (``ask(1)``). An
invalid suggestion is told to Optuna as FAIL (TPE ignores failed trials), a
repeated one as PRUNED (Optuna's advice for duplicates; TPE then ranks it with
the bad trials); neither counts. After ``--max-retries`` such suggestions in a
row the search stops with fewer than ``N`` evaluations (reported). The
nasframe strategies never propose invalid or repeated architectures (were one
to, it would be told as a failed trial and not counted either).

Reported per epsilon and budget: the ground-truth optimum (min feasible GMACs)
and, per method, the mean over seeds of the best feasible GMACs found, the mean
ratio best / optimum (1.0: the optimum was found) with the number of seeds that
found the optimum, and the ratios of eps_bo's mean best to each peer's (below 1:
eps_bo found cheaper feasible models). A seed that found nothing feasible
scores the largest GMACs in the table (and is counted as a miss). Also the
strategy overhead of each method: the wall time of its ask and tell calls
(Optuna: ask, suggest and tell, failed suggestions included), table look-ups
excluded.

Usage::

    python benchmarks/eps_bo_vs_peers.py [--budget 10 20 40] [--seeds 5]
                                         [--quantiles 0.7 0.8 0.9] [--n-initial 5]
                                         [--methods eps_bo random optuna optuna-levels]
                                         [--cache benchmarks/.cache] [--threads 2]
                                         [--quick] [--json PATH]

``--quick``: budget 10, 2 seeds. It prints its tables and exits 0: a
measurement, not an assertion.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nasframe.architecture import Architecture  # noqa: E402
from nasframe.context import content_hash  # noqa: E402
from nasframe.trial import ObjectiveSpec, Problem, Trial  # noqa: E402

#: the space scored exhaustively (288 valid architectures)
SPACE_PARAMS: dict[str, Any] = {
    "preset": "tiny", "pairs": ["full", "removed"], "widths": [1.0, 0.5],
    "mid": "keep", "innermost": "remove",
    "fidelity": {"samples": 4, "batch_size": 4, "seed": 0}, "latent_size": 16,
}
#: objectives' params (GMACs of one U-Net step at batch 1; fidelity without distillation)
OBJECTIVE_PARAMS: dict[str, dict[str, Any]] = {"gmacs": {}, "fidelity": {}}
TABLE_VERSION = 1
METHODS = ("eps_bo", "random", "optuna", "optuna-levels")
BUDGETS = (10, 20, 40)
QUANTILES = (0.7, 0.8, 0.9)


# ------------------------------------------------------------------ the table
class Table:
    """Every valid architecture of a space with its GMACs and fidelity.

    (A plain class, not a dataclass, so that the script also works when loaded by
    ``importlib`` without an entry in ``sys.modules``, as the tests do.)"""

    def __init__(self, archs: Sequence[Architecture], gmacs: Sequence[float],
                 fidelity: Sequence[float], seconds: float = 0.0, cached: bool = False):
        self.archs = list(archs)
        self.gmacs = np.asarray(gmacs, dtype=float)
        self.fidelity = np.asarray(fidelity, dtype=float)
        self.seconds = seconds        # time it took to build (0 when given)
        self.cached = cached          # read from the cache
        if not (len(self.archs) == len(self.gmacs) == len(self.fidelity)):
            raise ValueError("archs, gmacs and fidelity must have the same length")
        self.index = {a.id: i for i, a in enumerate(self.archs)}
        if len(self.index) != len(self.archs):
            raise ValueError("the table holds an architecture twice")

    def __len__(self) -> int:
        return len(self.archs)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"arch": a.to_dict(), "gmacs": float(g), "fidelity": float(f)}
                for a, g, f in zip(self.archs, self.gmacs, self.fidelity)]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]], **kw: Any) -> Table:
        return cls([Architecture(r["arch"]) for r in rows], [r["gmacs"] for r in rows],
                   [r["fidelity"] for r in rows], **kw)


def make_space(params: dict[str, Any] | None = None):
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    return SDUNetSpace(**(params or SPACE_PARAMS))


def table_key(space_params: dict[str, Any]) -> str:
    import torch

    return content_hash({"benchmark": "eps_bo_vs_peers", "version": TABLE_VERSION,
                         "space": "sd_unet", "space_params": space_params,
                         "objectives": OBJECTIVE_PARAMS, "torch": torch.__version__.split("+")[0]})


def build_table(space, space_params: dict[str, Any], cache: Path | None) -> Table:
    """The exhaustive table, read from ``cache`` when it is there, else scored and saved."""
    import tempfile

    from nasframe.candidate import Candidate
    from nasframe.context import Context
    from nasframe_objectives.cost import GMACs
    from nasframe_objectives.fidelity import Fidelity

    path = None
    if cache is not None:
        path = Path(cache) / f"eps_bo_vs_peers-{table_key(space_params)}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return Table.from_json(data["rows"], seconds=data["seconds"], cached=True)
    start = time.perf_counter()
    archs = list(space.enumerate())
    print(f"[table] scoring {len(archs)} architectures (GMACs, fidelity)...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(Path(tmp), quiet=True)
        fid, gm = Fidelity(**OBJECTIVE_PARAMS["fidelity"]), GMACs(**OBJECTIVE_PARAMS["gmacs"])
        fid.prepare(space, ctx)
        gm.prepare(space, ctx)
        g, f = [], []
        for k, arch in enumerate(archs):
            g.append(gm(Candidate(space, arch), ctx)[0])
            f.append(fid(Candidate(space, arch), ctx)[0])
            if (k + 1) % 50 == 0 or k + 1 == len(archs):
                print(f"[table] {k + 1}/{len(archs)} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
    table = Table(archs, g, f, seconds=time.perf_counter() - start)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_text(json.dumps({"space_params": space_params, "objectives": OBJECTIVE_PARAMS,
                                        "seconds": table.seconds, "rows": table.to_json()}))
        tmp_path.replace(path)
    return table


# ------------------------------------------------------------- ground truth
def choose_epsilons(table: Table, quantiles: Sequence[float]) -> list[float]:
    """Fidelity bounds at these quantiles of the table's fidelity (values of the table)."""
    return [float(np.quantile(table.fidelity, q, method="lower")) for q in quantiles]


def ground_truth(table: Table, eps: float) -> dict[str, Any]:
    feasible = table.fidelity >= eps
    if not feasible.any():
        raise ValueError(f"no architecture has fidelity >= {eps}")
    i = int(np.flatnonzero(feasible)[np.argmin(table.gmacs[feasible])])
    return {"epsilon": eps, "optimum": float(table.gmacs[i]), "optimum_arch": table.archs[i].to_dict(),
            "optimum_fidelity": float(table.fidelity[i]), "feasible": int(feasible.sum()),
            "size": len(table)}


# ----------------------------------------------------------------- searches
class Recorder:
    """Counts the evaluations that count (valid, distinct) and the best feasible so far."""

    def __init__(self, space, table: Table, eps: float):
        self.space, self.table, self.eps = space, table, eps
        self.seen: set[int] = set()
        self.curve: list[float] = []           # best feasible GMACs after each evaluation
        self.invalid = 0
        self.repeated = 0

    @property
    def n(self) -> int:
        return len(self.curve)

    def row(self, arch: Architecture) -> int | None:
        """The table row of ``arch`` when it is valid, else None (nothing counted)."""
        return self.table.index.get(self.space.canonicalize(arch).id)

    def lookup(self, arch: Architecture) -> int | None:
        """The table row of ``arch``; None (and counted) when invalid or already evaluated."""
        arch = self.space.canonicalize(arch)
        i = self.table.index.get(arch.id)
        if i is None:
            if self.space.validate(arch) is None:
                raise RuntimeError(f"valid architecture {arch.id} is missing from the table")
            self.invalid += 1
            return None
        if i in self.seen:
            self.repeated += 1
            return None
        self.seen.add(i)
        best = self.curve[-1] if self.curve else math.inf
        if self.table.fidelity[i] >= self.eps:
            best = min(best, float(self.table.gmacs[i]))
        self.curve.append(best)
        return i


def _problem(space) -> Problem:
    return Problem(space, (ObjectiveSpec("gmacs", "min"), ObjectiveSpec("fidelity", "max")))


def run_nasframe(name: str, params: dict[str, Any], space, table: Table, eps: float,
                 budget: int, seed: int, max_retries: int) -> tuple[Recorder, float]:
    """A nasframe strategy plugin driven by ask(1)/tell against the table."""
    from nasframe.history import TrialHistory
    from nasframe.plugins import get_plugins

    t0 = time.perf_counter()
    history = TrialHistory()
    strat = get_plugins().strategies.create(name, params, problem=_problem(space), seed=seed,
                                            history=history)
    overhead = time.perf_counter() - t0
    rec = Recorder(space, table, eps)
    misses, number = 0, 0
    while rec.n < budget and misses < max_retries:
        t0 = time.perf_counter()
        asked = strat.ask(1)
        overhead += time.perf_counter() - t0
        if not asked:
            break
        i = rec.lookup(asked[0])
        if i is None:
            misses += 1
            trial = Trial(number, asked[0], "failed", error="invalid or repeated")
        else:
            misses = 0
            trial = Trial(number, asked[0], "complete",
                          {"gmacs": float(table.gmacs[i]), "fidelity": float(table.fidelity[i])},
                          feasible=True)
        number += 1
        history.record([trial])       # what the runner does: the strategy reads the history
        t0 = time.perf_counter()
        strat.tell([trial])
        overhead += time.perf_counter() - t0
    return rec, overhead


def level_groups(space, archs: Sequence[Architecture]) -> dict[str, tuple[list[str], list[str]]]:
    """``{group: (decision names, choices)}``: each resolution level's pair decisions as
    one group whose choices are the level's assignments seen in ``archs`` (encoded as
    strings), every other decision alone. Raises ValueError unless ``archs`` is exactly
    the product of the groups' choices (the factorisation Optuna can then search)."""
    cfg = getattr(space, "config", None)
    groups: dict[str, list[str]] = {}
    for d in space.decisions():
        m = re.fullmatch(r"(down|up)(\d+)_\d+", d.name)
        if m and cfg is not None:
            level = int(m[2]) if m[1] == "down" else cfg.up_level(int(m[2]))
            key = f"level{level}"
        else:
            key = d.name
        groups.setdefault(key, []).append(d.name)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for key, names in groups.items():
        seen = {json.dumps([a[n] for n in names]) for a in archs}
        out[key] = (names, sorted(seen))
    if math.prod(len(c) for _, c in out.values()) != len(archs):
        raise ValueError("the valid architectures are not the product of per-level choices; "
                         "'optuna-levels' cannot reparametrise this space")
    return out


def raw_groups(space) -> dict[str, tuple[list[str], list[Any]]]:
    """Every decision as its own categorical, over all of its values."""
    return {d.name: ([d.name], list(d.values())) for d in space.decisions()}


def run_optuna(space, table: Table, eps: float, budget: int, seed: int, max_retries: int,
               groups: dict[str, tuple[list[str], list[Any]]], encoded: bool
               ) -> tuple[Recorder, float]:
    """Optuna's TPE with ``constraints_func`` (constraint ``eps - fidelity <= 0``), GMACs minimised.

    ``encoded``: the choices are JSON lists of the group's decision values."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(constraints_func=_constraint, seed=seed)
    t0 = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=sampler)
    overhead = time.perf_counter() - t0
    rec = Recorder(space, table, eps)
    misses = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while rec.n < budget and misses < max_retries:
            t0 = time.perf_counter()
            trial = study.ask()
            values: dict[str, Any] = {}
            for key, (names, choices) in groups.items():
                pick = trial.suggest_categorical(key, choices)
                values.update(zip(names, json.loads(pick)) if encoded else {names[0]: pick})
            overhead += time.perf_counter() - t0
            arch = Architecture(values)
            i = rec.lookup(arch)
            repeat = None if i is not None else rec.row(arch)
            t0 = time.perf_counter()
            if repeat is not None:      # as Optuna's FAQ suggests for duplicates: prune it
                misses += 1
                trial.set_user_attr("constraint", eps - float(table.fidelity[repeat]))
                study.tell(trial, state=TrialState.PRUNED)
            elif i is None:             # invalid: no values to tell
                misses += 1
                study.tell(trial, state=TrialState.FAIL)
            else:
                misses = 0
                trial.set_user_attr("constraint", eps - float(table.fidelity[i]))
                study.tell(trial, float(table.gmacs[i]))
            overhead += time.perf_counter() - t0
    return rec, overhead


def _constraint(trial) -> list[float]:
    return [trial.user_attrs.get("constraint", math.inf)]


def search(method: str, space, table: Table, eps: float, budget: int, seed: int, *,
           n_initial: int = 5, max_retries: int = 1000,
           levels: dict[str, tuple[list[str], list[Any]]] | None = None) -> dict[str, Any]:
    """One search of ``budget`` counted evaluations; its best-so-far curve and overhead."""
    if method == "eps_bo":
        rec, overhead = run_nasframe("eps_bo", {"minimise": "gmacs", "bounds": {"fidelity": eps},
                                                "n_initial": n_initial},
                                     space, table, eps, budget, seed, max_retries)
    elif method == "random":
        rec, overhead = run_nasframe("random", {}, space, table, eps, budget, seed, max_retries)
    elif method == "optuna":
        rec, overhead = run_optuna(space, table, eps, budget, seed, max_retries,
                                   raw_groups(space), encoded=False)
    elif method == "optuna-levels":
        groups = levels if levels is not None else level_groups(space, table.archs)
        rec, overhead = run_optuna(space, table, eps, budget, seed, max_retries, groups, encoded=True)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return {"curve": rec.curve, "evaluations": rec.n, "invalid": rec.invalid,
            "repeated": rec.repeated, "overhead_s": overhead}


# ------------------------------------------------------------------ summary
def best_at(curve: Sequence[float], n: int) -> float:
    """Best feasible value within the first ``n`` counted evaluations (inf if none)."""
    if not curve:
        return math.inf
    return float(curve[min(n, len(curve)) - 1])


def summarise(runs: dict[str, list[dict[str, Any]]], truth: dict[str, Any], budget: int,
              penalty: float) -> dict[str, Any]:
    """Per method: mean best (a miss scores ``penalty``), mean ratio to the optimum,
    hits (seeds that found the optimum), misses (seeds with nothing feasible);
    and eps_bo's mean best over each peer's."""
    opt = truth["optimum"]
    out: dict[str, Any] = {"epsilon": truth["epsilon"], "budget": budget, "optimum": opt,
                           "methods": {}, "ratios": {}}
    for method, seeds in runs.items():
        raw = [best_at(r["curve"], budget) for r in seeds]
        scored = [penalty if math.isinf(b) else b for b in raw]
        ratios = [b / opt for b in scored]
        out["methods"][method] = {
            "best": raw, "mean_best": statistics.fmean(scored),
            "mean_ratio": statistics.fmean(ratios), "ratios": ratios,
            "hits": sum(math.isclose(b, opt, rel_tol=1e-12) for b in raw),
            "misses": sum(math.isinf(b) for b in raw), "seeds": len(raw),
            "evaluations": statistics.fmean(min(budget, r["evaluations"]) for r in seeds)}
    if "eps_bo" in out["methods"]:
        mine = out["methods"]["eps_bo"]["mean_best"]
        for method, m in out["methods"].items():
            if method != "eps_bo":
                out["ratios"][f"eps_bo/{method}"] = mine / m["mean_best"]
    return out


def compare(space, table: Table, epsilons: Sequence[float], budgets: Sequence[int], seeds: int,
            methods: Sequence[str] = METHODS, *, n_initial: int = 5, max_retries: int = 1000,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole comparison on a given table: ground truths, runs, summaries, overheads."""
    budget = max(budgets)
    levels = level_groups(space, table.archs) if "optuna-levels" in methods else None
    penalty = float(table.gmacs.max())
    truths, rows, all_runs = [], [], []
    overhead = {m: 0.0 for m in methods}
    evals = {m: 0 for m in methods}
    wall = {m: 0.0 for m in methods}
    for eps in epsilons:
        truth = ground_truth(table, eps)
        truths.append(truth)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for seed in range(seeds):
            for m in methods:          # interleaved, so that drift hits every method alike
                start = time.perf_counter()
                r = search(m, space, table, eps, budget, seed, n_initial=n_initial,
                           max_retries=max_retries, levels=levels)
                wall[m] += time.perf_counter() - start
                overhead[m] += r["overhead_s"]
                evals[m] += r["evaluations"]
                runs[m].append(r)
                all_runs.append({"epsilon": eps, "seed": seed, "method": m, **r})
                if progress:
                    progress(f"eps {eps:.3f} seed {seed} {m}: best {best_at(r['curve'], budget):.5g} "
                             f"after {r['evaluations']} evaluations ({r['invalid']} invalid, "
                             f"{r['repeated']} repeated suggestions), {r['overhead_s']:.1f} s")
        rows += [summarise(runs, truth, n, penalty) for n in budgets]
    return {"truths": truths, "rows": rows, "runs": all_runs, "penalty": penalty,
            "overhead": {m: {"seconds": overhead[m], "evaluations": evals[m],
                             "ms_per_evaluation": 1e3 * overhead[m] / max(evals[m], 1),
                             "wall_s": wall[m]} for m in methods}}


# -------------------------------------------------------------------- print
def _fmt_ratio(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def report(result: dict[str, Any], table: Table, quantiles: Sequence[float], seeds: int) -> None:
    methods = list(result["overhead"])
    print(f"\nGround truth: {len(table)} valid architectures, "
          + (f"table read from cache (built in {table.seconds:.0f} s)" if table.cached
             else f"table built in {table.seconds:.0f} s")
          + f"; GMACs range {table.gmacs.min():.5f}-{table.gmacs.max():.5f}, fidelity range "
          f"{table.fidelity.min():.2f}-{table.fidelity.max():.2f} dB")
    print(f"  {'quantile':>8s} {'eps (dB)':>9s} {'feasible':>9s} {'optimum GMACs':>14s} "
          f"{'its fidelity':>12s}")
    for q, t in zip(quantiles, result["truths"]):
        print(f"  {q:8.2f} {t['epsilon']:9.3f} {t['feasible']:>4d}/{t['size']:<4d} "
              f"{t['optimum']:14.5f} {t['optimum_fidelity']:12.3f}")
    print(f"\nBest feasible GMACs after N evaluations, {seeds} seeds: mean best, mean best/optimum "
          f"[seeds that found the optimum / that found nothing feasible]")
    head = f"  {'eps':>7s} {'N':>4s} {'optimum':>8s}"
    for m in methods:
        head += f" | {m:>24s}"
    ratio_keys = [k for k in result["rows"][0]["ratios"]] if result["rows"] else []
    for k in ratio_keys:
        head += f" {k:>{max(len(k), 8)}s}"
    print(head)
    for row in result["rows"]:
        line = f"  {row['epsilon']:7.3f} {row['budget']:4d} {row['optimum']:8.5f}"
        for m in methods:
            s = row["methods"][m]
            cell = f"{s['mean_best']:.5f} {s['mean_ratio']:5.3f} [{s['hits']}/{s['misses']}]"
            line += f" | {cell:>24s}"
        for k in ratio_keys:
            line += f" {_fmt_ratio(row['ratios'][k]):>{max(len(k), 8)}s}"
        print(line)
    last = result["rows"][-1] if result["rows"] else None
    short = [f"{m}: {last['methods'][m]['evaluations']:.1f}" for m in methods
             if last and last["methods"][m]["evaluations"] < last["budget"]]
    if short:
        print(f"  fewer evaluations than N={last['budget']} (mean, last row; the retry "
              f"cap stopped the search): " + ", ".join(short))
    print("\nStrategy overhead (ask/tell/suggest time, table look-ups excluded), all runs:")
    print(f"  {'method':14s} {'seconds':>9s} {'evaluations':>12s} {'ms/evaluation':>14s} "
          f"{'per search':>10s} {'invalid':>8s} {'repeated':>8s}")
    for m in methods:
        o = result["overhead"][m]
        runs = [r for r in result["runs"] if r["method"] == m]
        print(f"  {m:14s} {o['seconds']:9.1f} {o['evaluations']:12d} "
              f"{o['ms_per_evaluation']:14.1f} {o['evaluations'] / max(len(runs), 1):10.1f} "
              f"{sum(r['invalid'] for r in runs):8d} {sum(r['repeated'] for r in runs):8d}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, nargs="+", default=None,
                        help=f"evaluations (default {' '.join(map(str, BUDGETS))}; --quick: 10)")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--quantiles", type=float, nargs="+", default=list(QUANTILES),
                        help="epsilons at these quantiles of the table's fidelity")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--n-initial", type=int, default=5, help="eps_bo's random start")
    parser.add_argument("--max-retries", type=int, default=1000,
                        help="invalid or repeated suggestions in a row before a search stops")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="budget 10, 2 seeds")
    parser.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    budgets = sorted(set(args.budget or ([10] if args.quick else list(BUDGETS))))
    seeds = args.seeds or (2 if args.quick else 5)
    import torch

    torch.set_num_threads(args.threads)
    space = make_space(SPACE_PARAMS)
    table = build_table(space, SPACE_PARAMS, args.cache)
    epsilons = choose_epsilons(table, args.quantiles)
    start = time.perf_counter()
    result = compare(space, table, epsilons, budgets, seeds, args.methods, n_initial=args.n_initial,
                     max_retries=args.max_retries,
                     progress=None if args.quiet else (lambda s: print(s, file=sys.stderr)))
    result["search_wall_s"] = time.perf_counter() - start
    report(result, table, args.quantiles, seeds)
    print(f"\n(search wall time {result['search_wall_s']:.0f} s; {args.threads} threads)")
    result.update({"space_params": SPACE_PARAMS, "quantiles": args.quantiles, "budgets": budgets,
                   "seeds": seeds, "n_initial": args.n_initial, "max_retries": args.max_retries,
                   "threads": args.threads, "table_seconds": table.seconds,
                   "table_cached": table.cached, "table_size": len(table)})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(result), indent=1))
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


if __name__ == "__main__":
    main()
