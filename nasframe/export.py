"""Export a run: trials.csv, pareto.json, pareto.png, hypervolume.png, front/<id>.yaml."""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasframe.config import config_from_dict
from nasframe.pareto import default_reference_point, hypervolume_history, pareto_ranks
from nasframe.store import TrialStore
from nasframe.trial import Trial, to_jsonable


@dataclass(frozen=True)
class FrontAnalysis:
    trials: list[Trial]
    keys: list[str]
    directions: list[str]
    values: np.ndarray      # (n, m), NaN where missing
    feasible: np.ndarray    # (n,)
    ranks: np.ndarray       # (n,), -1 for failed
    ref_point_min: np.ndarray
    hv_history: np.ndarray  # (n,)

    @property
    def pareto(self) -> np.ndarray:
        return (self.ranks == 0) & self.feasible


@dataclass(frozen=True)
class Pick:
    """The trial a strategy recommends (:meth:`nasframe.strategy.Strategy.pick`) and why."""

    index: int   # position in FrontAnalysis.trials
    trial: Trial
    rule: str


def find_pick(a: FrontAnalysis, cfg: dict[str, Any]) -> Pick | None:
    """The strategy's pick among the analysed trials, or None.

    The strategy is made afresh from the stored config, as a run makes it (its
    state is not loaded). When it cannot be made (e.g. its plugin is no longer
    installed) the export goes on without a pick, with a warning.
    """
    try:
        from nasframe.experiment import Experiment
        from nasframe.runner import Runner

        exp = Experiment.from_config(config_from_dict(cfg), source="config snapshot")
        chosen = Runner._make_strategy(exp).pick(list(a.trials))
    except Exception as err:  # noqa: BLE001 - the export must not fail for want of a pick
        warnings.warn(f"no pick exported: the strategy could not be made or failed to pick "
                      f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2)
        return None
    if chosen is None:
        return None
    trial, rule = chosen
    index = next((i for i, t in enumerate(a.trials) if t.number == trial.number), None)
    if index is None:
        warnings.warn(f"no pick exported: the strategy picked trial {trial.number}, which is not "
                      "a finished trial of this run", RuntimeWarning, stacklevel=2)
        return None
    return Pick(index, a.trials[index], str(rule))


def analyse(store: TrialStore) -> FrontAnalysis:
    """Ranks, front and hypervolume history of every finished trial, in trial order."""
    cfg = config_from_dict(store.config)
    keys, dirs = [], []
    for o in cfg.objectives:
        keys.append(o.key)
        dirs.append(o.direction or _stored_direction(store, o.key))
    trials = [t for t in store.trials() if t.status != "running"]
    values = np.array([[t.values.get(k, math.nan) for k in keys] for t in trials],
                      dtype=float).reshape(-1, len(keys))
    feasible = np.array([bool(t.feasible) and t.status != "failed" for t in trials], dtype=bool)
    violation = np.array([t.violation if t.feasible is False else 0.0 for t in trials])
    ranks = pareto_ranks(values, dirs, feasible, violation)
    ranks[np.array([t.status == "failed" for t in trials], dtype=bool)] = -1
    if cfg.reference_point:
        ref = np.array([cfg.reference_point[k] * (1 if d == "min" else -1) for k, d in zip(keys, dirs)])
    else:
        ok = feasible & ~np.isnan(values).any(axis=1)
        ref = default_reference_point(values[ok], dirs) if ok.any() else np.full(len(keys), np.nan)
    hv = hypervolume_history(values, dirs, ref, feasible)
    return FrontAnalysis(trials, keys, dirs, values, feasible, ranks, ref, hv)


def _stored_direction(store: TrialStore, key: str) -> str:
    directions = store.get_meta("directions") or {}
    return directions.get(key, "min")


def export_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every export file; returns their paths by name."""
    run_dir = Path(run_dir)
    store = TrialStore.open(run_dir)
    try:
        a = analyse(store)
        cfg = store.config
    finally:
        store.close()
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    pick = find_pick(a, cfg)
    paths = {
        "trials.csv": _write_csv(a, out / "trials.csv", pick),
        "pareto.json": _write_json(a, cfg, out / "pareto.json", pick),
        "front": _write_front(a, cfg, out / "front", pick),
    }
    from nasframe.plots import plot_hypervolume, plot_pareto

    from nasframe.trial import Constraint

    constraints = [Constraint.parse(c) for c in cfg.get("constraints", [])]
    paths["pareto.png"] = plot_pareto(a, out / "pareto.png", cfg.get("name", "experiment"), constraints,
                                      pick=None if pick is None else (pick.index, pick.rule))
    paths["hypervolume.png"] = plot_hypervolume(a, out / "hypervolume.png")
    return paths


def _arch_columns(trials: list[Trial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        for k in t.arch:
            if k not in names:
                names.append(k)
    return names


def _write_csv(a: FrontAnalysis, path: Path, pick: Pick | None = None) -> Path:
    arch_cols = _arch_columns(a.trials)
    header = (["number", "id", "origin", "status", "feasible", "violation", "is_pareto", "rank", "pick"]
              + a.keys + [f"{k}.provenance" for k in a.keys]
              + ["duration_s", "attempt", "seed", "error"] + [f"arch.{c}" for c in arch_cols])
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, t in enumerate(a.trials):
            prov = [t.provenance[k].short() if k in t.provenance else "" for k in a.keys]
            vals = ["" if math.isnan(v) else f"{v:.6g}" for v in a.values[i]]
            w.writerow([t.number, t.arch.id, t.origin, t.status,
                        "" if t.feasible is None else int(bool(t.feasible)),
                        f"{t.violation:.6g}", int(a.pareto[i]), int(a.ranks[i]),
                        int(pick is not None and pick.index == i)]
                       + vals + prov
                       + ["" if t.duration is None else f"{t.duration:.3f}", t.attempt, t.seed,
                          (t.error or "").splitlines()[0] if t.error else ""]
                       + [json.dumps(t.arch[c]) if c in t.arch else "" for c in arch_cols])
    return path


def _member(a: FrontAnalysis, i: int) -> dict[str, Any]:
    t = a.trials[i]
    return {
        "id": t.arch.id,
        "trial": t.number,
        "origin": t.origin,
        "architecture": t.arch.to_dict(),
        "values": {k: {"value": to_jsonable(float(a.values[i][j])),
                       "direction": a.directions[j],
                       "provenance": t.provenance[k].to_dict() if k in t.provenance else None}
                   for j, k in enumerate(a.keys)},
    }


def _pick_doc(a: FrontAnalysis, pick: Pick) -> dict[str, Any]:
    return {"trial": pick.trial.number, "id": pick.trial.arch.id, "rule": pick.rule,
            "origin": pick.trial.origin, "is_pareto": bool(a.pareto[pick.index]),
            "architecture": pick.trial.arch.to_dict(),
            "values": {k: to_jsonable(float(a.values[pick.index][j])) for j, k in enumerate(a.keys)}}


def _write_json(a: FrontAnalysis, cfg: dict[str, Any], path: Path, pick: Pick | None = None) -> Path:
    front = [i for i in np.flatnonzero(a.pareto)]
    front.sort(key=lambda i: tuple(a.values[i]))
    refs = [i for i, t in enumerate(a.trials) if t.is_reference]
    doc = {
        "experiment": cfg.get("name"),
        "search_space": cfg.get("search_space"),
        "objectives": [{"key": k, "direction": d} for k, d in zip(a.keys, a.directions)],
        "constraints": cfg.get("constraints", []),
        "reference_point": to_jsonable([float(x) * (1 if d == "min" else -1)
                                        for x, d in zip(a.ref_point_min, a.directions)]),
        "hypervolume": float(a.hv_history[-1]) if len(a.hv_history) else 0.0,
        "trials": len(a.trials),
        "front": [_member(a, i) for i in front],
        "references": [dict(_member(a, i), name=a.trials[i].origin.split(":", 1)[1],
                            is_pareto=bool(a.pareto[i])) for i in refs],
    }
    if pick is not None:
        doc["pick"] = _pick_doc(a, pick)
    path.write_text(json.dumps(to_jsonable(doc), indent=2))
    return path


def _write_front(a: FrontAnalysis, cfg: dict[str, Any], folder: Path, pick: Pick | None = None) -> Path:
    """``<id>.yaml`` per front member, and ``pick.yaml`` (with the rule) for the strategy's pick."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    members = [(int(i), None) for i in np.flatnonzero(a.pareto)]
    if pick is not None:
        members.append((pick.index, pick.rule))
    for i, rule in members:
        m = _member(a, i)
        doc = {
            "id": m["id"],
            "search_space": cfg.get("search_space"),
            "architecture": m["architecture"],
            "values": {k: v["value"] for k, v in m["values"].items()},
            "provenance": {k: v["provenance"] for k, v in m["values"].items()},
        }
        name = m["id"] if rule is None else "pick"
        if rule is not None:
            doc["pick"] = {"trial": m["trial"], "rule": rule}
        (folder / f"{name}.yaml").write_text(
            f"# Re-evaluate with: nasframe evaluate EXP.yaml --arch {folder.name}/{name}.yaml\n"
            + yaml.safe_dump(to_jsonable(doc), sort_keys=False))
    return folder
