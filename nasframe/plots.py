"""Plots of a run: pairwise objective scatter with the front, hypervolume history."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nasframe.analysis import FrontAnalysis
    from nasframe.trial import Constraint


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(key: str, direction: str) -> str:
    return f"{key} ({'lower' if direction == 'min' else 'higher'} is better)"


def plot_pareto(a: FrontAnalysis, path: Path, title: str = "",
                constraints: Sequence[Constraint] = (),
                pick: tuple[int, str] | None = None) -> Path:
    """Every pair of objectives: trials (grey), infeasible (red x), front (blue, joined
    in 2-D, each point labelled with its id, the name of its
    ``front/<id>.yaml``), reference architectures (black stars, named; with the id when on the front), constraint bounds (dashed red),
    the strategy's pick ``(index into a.trials, rule)`` (an orange diamond, labelled with
    its rule); the title counts the trials that cannot be placed (failed, pruned, or
    before every objective was evaluated)."""
    plt = _plt()
    m = len(a.keys)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)] if m > 1 else [(0, 0)]
    cols = min(3, len(pairs))
    rows = int(np.ceil(len(pairs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    ok = ~np.isnan(a.values).any(axis=1)
    refs = np.array([t.is_reference for t in a.trials], dtype=bool)
    for ax, (xi, yi) in zip(axes.flat, pairs):
        x, y = a.values[:, xi], a.values[:, yi] if m > 1 else np.arange(len(a.values))
        feas = ok & a.feasible & ~refs
        infeas = ok & ~a.feasible & ~refs
        ax.scatter(x[feas], y[feas], s=18, c="0.65", label="trials")
        if infeas.any():
            ax.scatter(x[infeas], y[infeas], s=22, c="tab:red", marker="x", label="infeasible")
        front = np.flatnonzero(a.pareto)
        if len(front):
            order = front[np.argsort(x[front])]
            ax.scatter(x[order], y[order], s=40, c="tab:blue", edgecolors="k", zorder=3,
                       label="Pareto front")
            if m == 2:
                ax.plot(x[order], y[order], c="tab:blue", lw=1, drawstyle="steps-post"
                        if (a.directions[0] == "min") == (a.directions[1] == "max") else "steps-pre")
            # each front point named by its id, as in front/<id>.yaml (alternating sides)
            shown = order if len(order) <= 40 else order[:: int(np.ceil(len(order) / 40))]
            for k, i in enumerate(shown):
                if not ok[i] or refs[i]:
                    continue
                ax.annotate(a.trials[i].arch.id, (x[i], y[i]), textcoords="offset points",
                            xytext=(5, 5 if k % 2 == 0 else -10), fontsize=6.5, color="tab:blue",
                            alpha=0.9)
        for i in np.flatnonzero(refs & ok):
            ax.scatter(x[i], y[i], s=160, marker="*", c="k", zorder=4)
            name = a.trials[i].origin.split(":", 1)[1]
            if a.pareto[i]:             # on the front: its file is front/<id>.yaml too
                name = f"{name} ({a.trials[i].arch.id})"
            ax.annotate(name, (x[i], y[i]), textcoords="offset points", xytext=(6, 6), fontsize=8)
        if pick is not None and ok[pick[0]]:
            p = pick[0]
            ax.scatter(x[p], y[p], s=150, marker="D", facecolors="none", edgecolors="tab:orange",
                       linewidths=2.2, zorder=5, label=f"pick: {pick[1]}")
            ax.annotate(f"pick (trial {a.trials[p].number})", (x[p], y[p]), textcoords="offset points",
                        xytext=(8, -12), fontsize=8, color="tab:orange")
        for c in constraints:
            if c.key == a.keys[xi]:
                ax.axvline(c.bound, c="tab:red", ls="--", lw=1, label=f"constraint {c}")
            elif m > 1 and c.key == a.keys[yi]:
                ax.axhline(c.bound, c="tab:red", ls="--", lw=1, label=f"constraint {c}")
        ax.set_xlabel(_label(a.keys[xi], a.directions[xi]))
        ax.set_ylabel(_label(a.keys[yi], a.directions[yi]) if m > 1 else "trial")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if refs.any():
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="*", color="k", ls="", markersize=12))
        labels.append("reference architectures")
    axes.flat[0].legend(handles, labels, loc="best", fontsize=8, framealpha=0.8)
    unplaced = int((~ok).sum())
    note = f"\n{unplaced} not shown: failed, pruned, or infeasible before every objective ran" if unplaced else ""
    fig.suptitle(f"{title}: {int(a.pareto.sum())} on the front of {len(a.trials)} trials{note}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hypervolume(a: FrontAnalysis, path: Path) -> Path:
    """Hypervolume of the feasible trials so far, by trial."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    n = np.arange(1, len(a.hv_history) + 1)
    ax.plot(n, a.hv_history, c="tab:blue", drawstyle="steps-post")
    ref = ", ".join(f"{k}={(v if d == 'min' else -v):.4g}"
                    for k, v, d in zip(a.keys, a.ref_point_min, a.directions))
    ax.set_title(f"hypervolume (reference point {ref})", fontsize=9)
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
