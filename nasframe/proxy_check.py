"""Proxies checked against the device: rank correlation of each proxy objective with each
measured latency over a run's complete trials (``nasframe analyse RUN_DIR``).

A *proxy* is any objective whose values carry provenance kind ``proxy``
(``params``, ``gmacs``, ``transformer_count``, ``latency_lut``, ...); a *measured
latency* is a ``measured`` objective in milliseconds or seconds (``latency`` on
any backend). For every pair, Kendall's tau (``scipy.stats.kendalltau``, tau-b:
ties handled) over the trials that have both values says how well ranking by the
proxy ranks by the measurement: 1 = the same order, 0 = unrelated. NanoSD's claim
that fewer parameters need not mean a faster phone, and ENS's use of the
transformer count as a latency proxy, are each one row of this table.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nasframe.results import Run

TIME_UNITS = ("ms", "s", "us", "µs")


@dataclass(frozen=True)
class Correlation:
    proxy: str
    measured: str
    n: int
    tau: float
    p_value: float
    proxy_backend: str
    measured_device: str


@dataclass(frozen=True)
class ProxyCheck:
    proxies: list[str]
    measured: list[str]
    correlations: list[Correlation]
    #: {key: [(trial number, value)]} of the complete trials used
    points: dict[str, dict[int, float]]

    def to_dict(self) -> dict[str, Any]:
        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        return {"proxies": self.proxies, "measured": self.measured,
                "correlations": [clean(asdict(c)) for c in self.correlations]}


def _kinds(trials, keys) -> dict[str, tuple[str, str, str]]:
    """key -> (kind, backend, device) from the first complete trial that has it."""
    out: dict[str, tuple[str, str, str]] = {}
    for t in trials:
        for k in keys:
            if k not in out and k in t.provenance:
                p = t.provenance[k]
                out[k] = (p.kind, p.backend, p.device)
    return out


def _is_time(run: Run, key: str) -> bool:
    cfg = next((o for o in run.config.objectives if o.key == key), None)
    if cfg is None:
        return False
    if cfg.name == "latency" or "latency" in key:
        return True
    try:
        from nasframe.plugins import get_plugins

        return getattr(get_plugins().objectives.get(cfg.name), "unit", "") in TIME_UNITS
    except Exception:  # noqa: BLE001 - a run read without its plugins
        return False


def proxy_check(run: Run, proxies: Sequence[str] | None = None,
                measured: Sequence[str] | None = None) -> ProxyCheck:
    """Kendall tau of each proxy against each measured latency of ``run``'s complete trials.

    ``proxies`` / ``measured`` pick the objective keys (default: by provenance kind,
    measured ones restricted to latencies)."""
    from scipy.stats import kendalltau

    from nasframe.errors import ConfigError

    trials = [t for t in run.trial_list() if t.status == "complete"]
    keys = run.keys
    for given in (proxies or [], measured or []):
        for k in given:
            if k not in keys:
                raise ConfigError(f"no objective {k!r} in this run; its objectives: "
                                  f"{', '.join(keys)}")
    kinds = _kinds(trials, keys)
    if proxies is None:
        proxies = [k for k in keys if kinds.get(k, ("",))[0] == "proxy"]
    if measured is None:
        measured = [k for k in keys if kinds.get(k, ("",))[0] == "measured" and _is_time(run, k)]
    points = {k: {t.number: float(t.values[k]) for t in trials
                  if k in t.values and math.isfinite(float(t.values[k]))}
              for k in [*proxies, *measured]}
    rows = []
    for m in measured:
        for p in proxies:
            common = sorted(set(points[p]) & set(points[m]))
            if len(common) >= 2:
                res = kendalltau([points[p][n] for n in common], [points[m][n] for n in common])
                tau, pv = float(res.statistic), float(res.pvalue)
            else:
                tau = pv = math.nan
            rows.append(Correlation(p, m, len(common), tau, pv, kinds.get(p, ("", "?"))[1],
                                    kinds.get(m, ("", "", "?"))[2]))
    return ProxyCheck(list(proxies), list(measured), rows, points)


def plot_proxy_check(check: ProxyCheck, path: str | Path) -> Path:
    """Scatter plots, one per (measured, proxy) pair, tau in each title; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = max(1, len(check.measured)), max(1, len(check.proxies))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    by_pair = {(c.proxy, c.measured): c for c in check.correlations}
    for i, m in enumerate(check.measured):
        for j, p in enumerate(check.proxies):
            ax = axes[i][j]
            common = sorted(set(check.points[p]) & set(check.points[m]))
            ax.scatter([check.points[p][n] for n in common], [check.points[m][n] for n in common],
                       s=14, alpha=0.75)
            c = by_pair[(p, m)]
            ax.set_title(f"tau = {c.tau:.2f} (n = {c.n})", fontsize=9)
            ax.set_xlabel(p)
            ax.set_ylabel(m)
            ax.grid(alpha=0.3)
    if not check.measured or not check.proxies:
        axes[0][0].text(0.5, 0.5, "no proxy/measured pair", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.suptitle("proxies vs measured latency (Kendall tau)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_proxy_check(check: ProxyCheck, out_dir: str | Path) -> tuple[Path, Path]:
    """``proxy_check.json`` and ``proxy_check.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "proxy_check.json"
    js.write_text(json.dumps(check.to_dict(), indent=1, default=str))
    return js, plot_proxy_check(check, out_dir / "proxy_check.png")


# -- deploy checks recorded by objectives (``details["deploy_check"]``) -----------------------
@dataclass(frozen=True)
class DeployCheckSummary:
    """One deploy check (e.g. ``npu`` on one SoC) over a run's trials: how many passed, the
    op types its compiler refused (in how many trials), and the values of the objectives
    that recorded it (min, median, max)."""

    check: str
    target: str
    trials: int
    passed: int
    refused_ops: dict[str, int]
    compile_s: float
    values: dict[str, tuple[float, float, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_check_summary(run: Run) -> list[DeployCheckSummary]:
    """A :class:`DeployCheckSummary` per (check, target) found in the provenance of the
    run's finished trials (the ``deploy_check`` details that objectives such as
    ``npu_compiles`` and ``npu_fidelity`` record)."""
    import statistics

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for t in run.trial_list():
        if t.status not in ("complete", "infeasible", "pruned"):
            continue
        seen: set[tuple[str, str]] = set()
        for key, prov in t.provenance.items():
            doc = prov.details.get("deploy_check")
            if not isinstance(doc, dict):
                continue
            g = groups.setdefault((str(doc.get("check", key)), prov.device),
                                  {"trials": 0, "passed": 0, "ops": {}, "seconds": [],
                                   "values": {}})
            if key in t.values and math.isfinite(float(t.values[key])):
                g["values"].setdefault(key, []).append(float(t.values[key]))
            if (doc.get("check", key), prov.device) in seen:
                continue   # two objectives of one trial share its compile
            seen.add((doc.get("check", key), prov.device))
            g["trials"] += 1
            g["passed"] += bool(doc.get("passed"))
            for op in doc.get("unsupported_ops", {}):
                g["ops"][op] = g["ops"].get(op, 0) + 1
            if isinstance(doc.get("compile_s"), (int, float)):
                g["seconds"].append(float(doc["compile_s"]))
    return [DeployCheckSummary(
        check, target, g["trials"], g["passed"],
        dict(sorted(g["ops"].items(), key=lambda kv: -kv[1])),
        statistics.median(g["seconds"]) if g["seconds"] else math.nan,
        {k: (min(v), statistics.median(v), max(v)) for k, v in g["values"].items()})
        for (check, target), g in groups.items()]
