"""Export a run: trials.csv, pareto.json, pareto.png, hypervolume.png, front/<id>.yaml.

An export writes only its own files: a manifest (``.nasframe-export.json``)
lists them, so a later export replaces or removes exactly those and refuses
to touch anything else in the folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasframe.analysis import FrontAnalysis, Pick
from nasframe.errors import ConfigError
from nasframe.trial import Trial, to_jsonable


MANIFEST = ".nasframe-export.json"


class _Writer:
    """Writes the export's files into one folder, and only its own.

    The folder's manifest lists every file a previous export wrote there. A
    file that exists but is not in it was not written by nasframe and is
    never overwritten or deleted (a ConfigError names it); files of the last
    export that this one does not write again (front members no longer on the
    front) are removed.
    """

    def __init__(self, out: Path):
        self.out = out
        self.previous = self._read_manifest()
        self.written: list[str] = []

    def _read_manifest(self) -> set[str]:
        path = self.out / MANIFEST
        if not path.is_file():
            return set()
        try:
            doc = json.loads(path.read_text())
            return {str(p) for p in doc.get("files", [])}
        except (OSError, ValueError, AttributeError):
            return set()

    def check(self, names: Sequence[str]) -> None:
        """Refuse, before writing anything, to replace files nasframe did not write."""
        foreign = [n for n in names if (self.out / n).exists() and n not in self.previous]
        if foreign:
            raise ConfigError(
                f"{self.out}: {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} "
                "already exist(s) and were not written by `nasframe export`; move them away or "
                "export elsewhere with --out DIR")

    def begin(self, names: Sequence[str]) -> None:
        """Record every file this export may write before writing any: an export stopped at
        any point (Ctrl-C, SIGTERM, kill -9, a full disk) leaves a manifest that lets the
        next export replace what it left."""
        self._write_manifest(sorted(self.previous | set(names)))

    def _write_manifest(self, files: list[str]) -> None:
        tmp = self.out / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"files": files}, indent=1))
        os.replace(tmp, self.out / MANIFEST)

    def path(self, name: str) -> Path:
        p = self.out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(name)
        return p

    def finish(self) -> None:
        for stale in sorted(self.previous - set(self.written)):
            p = self.out / stale
            if p.is_file() and p.resolve().is_relative_to(self.out.resolve()):
                p.unlink()
        self._write_manifest(sorted(self.written))


#: what marks a folder as nasframe's (a run directory, or one nasframe prepared a cache in)
RUN_MARKERS = ("trials.db", ".nasframe.lock", "cache", MANIFEST)
#: the files an export writes into a run directory
EXPORT_NAMES = ("trials.csv", "pareto.json", "pareto.png", "hypervolume.png", "front")


def check_run_dir(run_dir: str | Path, field: str = "--out / output") -> None:
    """Refuse, before a search starts, a run directory holding files that are not nasframe's:
    a non-empty folder without any nasframe marker, or export names that nasframe did not
    write (the search would run, then its export would be refused)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    try:
        entries = sorted(p.name for p in run_dir.iterdir())
    except OSError:
        return
    if not entries:
        return
    if not any(m in entries for m in RUN_MARKERS):
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise ConfigError(f"{field}: {run_dir} holds files nasframe did not write ({shown}); "
                          "a run directory must be new or empty: choose another with --out DIR "
                          "(or `output:` in the experiment file)")
    previous = _Writer(run_dir).previous
    foreign = [n for n in EXPORT_NAMES if n in entries and n not in previous
               and not (n == "front" and _only_listed(run_dir / "front", previous, run_dir))]
    if foreign:
        raise ConfigError(f"{field}: {run_dir} already holds {', '.join(foreign)}, which "
                          "`nasframe export` did not write and would have to replace at the end "
                          "of the run; move them away or choose another directory with --out DIR")


def _only_listed(folder: Path, listed: set[str], root: Path) -> bool:
    if not folder.is_dir():
        return False
    return all(str(p.relative_to(root)) in listed for p in folder.rglob("*") if p.is_file())


def export_run(run_dir: str | Path, out_dir: str | Path | None = None,
               models: Sequence[str] = (), part: str | None = None,
               console=None, checks: Sequence[Any] = ()) -> dict[str, Path]:
    """Write every export file; returns their paths by name.

    ``models``: deployable formats (onnx, torchscript, exported_program) in which every
    front member and the pick are also written as ``front/<id>.<suffix>`` (with the check
    against PyTorch in ``<file>.json``), of model part ``part`` when given; this prepares
    the search space (trained weights are cached in the run directory). Without it the
    run directory is only read (it may be read-only when ``out_dir`` is elsewhere).
    ``checks``: :class:`~nasframe.backends.DeployCheck` instances run on every model file
    of a format they take (their reports in its ``.json``, their artefacts beside it).
    """
    from nasframe.results import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    a, pick, cfg = run.analysis, run.pick_result, run.config_dict
    out = Path(out_dir) if out_dir else run_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    front = _front_members(a, pick)
    writer = _Writer(out)
    names = ["trials.csv", "pareto.json", "pareto.png", "hypervolume.png"]
    names += [f"front/{n}.yaml" for n in front]
    from nasframe.deploy import FORMATS, SUFFIX

    for fmt in models:
        if fmt not in FORMATS:
            raise ConfigError(f"--models {fmt!r}: not a model format; use {', '.join(FORMATS)}")
    if checks and not models:
        raise ConfigError("--check runs on exported model files; add --models onnx")
    model_names = {f: [f"front/{n}{SUFFIX[f]}{ext}" for n in front for ext in ("", ".json")]
                   for f in models}
    for f in models:
        for c in checks:
            if f in c.formats:
                model_names[f] += [f"front/{Path(a).name}" for n in front
                                   for a in c.artefacts(str(out / "front" / f"{n}{SUFFIX[f]}"))]
    planned = names + [n for f in model_names for n in model_names[f]]
    writer.check(planned)
    writer.begin(planned)
    paths = {
        "trials.csv": _write_csv(a, writer.path("trials.csv"), pick),
        "pareto.json": _write_json(a, cfg, writer.path("pareto.json"), pick),
    }
    for name, (i, rule) in front.items():
        _write_member(a, cfg, writer.path(f"front/{name}.yaml"), i, rule)
    paths["front"] = out / "front"
    from nasframe.plots import plot_hypervolume, plot_pareto

    paths["pareto.png"] = plot_pareto(a, writer.path("pareto.png"), cfg.get("name", "experiment"),
                                      list(run.config.parsed_constraints),
                                      pick=None if pick is None else (pick.index, pick.rule))
    paths["hypervolume.png"] = plot_hypervolume(a, writer.path("hypervolume.png"))
    try:
        if models:
            from nasframe.deploy import export_models

            exp = run.experiment()
            ctx = exp.context(run_dir, console=console, quiet=console is None,
                              cpu_fallback=True)
            archs = {name: a.trials[i].arch for name, (i, _) in front.items()}
            for fmt in models:
                for name in model_names[fmt]:
                    writer.path(name)
                done = export_models(exp, ctx, archs, fmt, out / "front", part=part,
                                     checks=[c for c in checks if fmt in c.formats])
                for name, result in done.items():
                    paths[f"front/{name}{SUFFIX[fmt]}"] = Path(result.path)
    finally:   # a failed model export still leaves a manifest of what was written
        writer.finish()
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


def _front_members(a: FrontAnalysis, pick: Pick | None) -> dict[str, tuple[int, str | None]]:
    """File stem -> (trial index, pick rule or None): ``<id>`` per front member, ``pick``."""
    members: dict[str, tuple[int, str | None]] = {
        a.trials[int(i)].arch.id: (int(i), None) for i in np.flatnonzero(a.pareto)}
    if pick is not None:
        members["pick"] = (pick.index, pick.rule)
    return members


def _write_member(a: FrontAnalysis, cfg: dict[str, Any], path: Path, i: int, rule: str | None) -> Path:
    """One front member (or the pick, with its rule) as a YAML file that re-evaluates it."""
    m = _member(a, i)
    doc = {
        "id": m["id"],
        "search_space": cfg.get("search_space"),
        "architecture": m["architecture"],
        "values": {k: v["value"] for k, v in m["values"].items()},
        "provenance": {k: v["provenance"] for k, v in m["values"].items()},
    }
    if rule is not None:
        doc["pick"] = {"trial": m["trial"], "rule": rule}
    path.write_text(f"# Re-evaluate with: nasframe evaluate EXP.yaml --arch front/{path.name}\n"
                    + yaml.safe_dump(to_jsonable(doc), sort_keys=False))
    return path
