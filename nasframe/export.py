"""Export a run: trials.csv, pareto.json, pareto.png, hypervolume.png, front/<id>.yaml."""
from __future__ import annotations

import csv
import json
import math
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
    paths = {
        "trials.csv": _write_csv(a, out / "trials.csv"),
        "pareto.json": _write_json(a, cfg, out / "pareto.json"),
        "front": _write_front(a, cfg, out / "front"),
    }
    from nasframe.plots import plot_hypervolume, plot_pareto

    from nasframe.trial import Constraint

    constraints = [Constraint.parse(c) for c in cfg.get("constraints", [])]
    paths["pareto.png"] = plot_pareto(a, out / "pareto.png", cfg.get("name", "experiment"), constraints)
    paths["hypervolume.png"] = plot_hypervolume(a, out / "hypervolume.png")
    return paths


def _arch_columns(trials: list[Trial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        for k in t.arch:
            if k not in names:
                names.append(k)
    return names


def _write_csv(a: FrontAnalysis, path: Path) -> Path:
    arch_cols = _arch_columns(a.trials)
    header = (["number", "id", "origin", "status", "feasible", "violation", "is_pareto", "rank"]
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
                        f"{t.violation:.6g}", int(a.pareto[i]), int(a.ranks[i])]
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


def _write_json(a: FrontAnalysis, cfg: dict[str, Any], path: Path) -> Path:
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
    path.write_text(json.dumps(to_jsonable(doc), indent=2))
    return path


def _write_front(a: FrontAnalysis, cfg: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for i in np.flatnonzero(a.pareto):
        m = _member(a, int(i))
        doc = {
            "id": m["id"],
            "search_space": cfg.get("search_space"),
            "architecture": m["architecture"],
            "values": {k: v["value"] for k, v in m["values"].items()},
            "provenance": {k: v["provenance"] for k, v in m["values"].items()},
        }
        (folder / f"{m['id']}.yaml").write_text(
            f"# Re-evaluate with: nasframe evaluate EXP.yaml --arch {folder.name}/{m['id']}.yaml\n"
            + yaml.safe_dump(to_jsonable(doc), sort_keys=False))
    return folder
