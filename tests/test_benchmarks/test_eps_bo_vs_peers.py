"""benchmarks/eps_bo_vs_peers.py on a synthetic table over a very small sd_unet space.

The real exhaustive table (GMACs and fidelity of 288 built models) is never
made here: the values are made-up functions of the architecture.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import load_script

pytest.importorskip("botorch")
pytest.importorskip("optuna")

#: 36 valid architectures out of 2^15 decision combinations
TINY = {"preset": "tiny", "pairs": ["full", "removed"], "widths": [1.0], "mid": "keep",
        "innermost": "remove"}


@pytest.fixture(scope="module")
def bench():
    return load_script("eps_bo_vs_peers")


@pytest.fixture(scope="module")
def setup(bench):
    space = bench.make_space(TINY)
    archs = list(space.enumerate())
    kept = np.array([sum(v == "full" for v in a.values()) for a in archs], dtype=float)
    jitter = np.array([int(a.id[:4], 16) / 65536 for a in archs])
    gmacs = 0.01 * kept + 0.001 * jitter                 # more pairs kept: more GMACs ...
    fidelity = 2.0 * kept - 6.0 * jitter                 # ... and more fidelity, not exactly
    return space, bench.Table(archs, gmacs, fidelity)


def test_ground_truth_is_the_true_constrained_minimum(bench, setup):
    _, table = setup
    assert len(table) == 36
    for eps in bench.choose_epsilons(table, [0.5, 0.9]):
        truth = bench.ground_truth(table, eps)
        feasible = [g for g, f in zip(table.gmacs, table.fidelity) if f >= eps]
        assert truth["optimum"] == min(feasible)
        assert truth["feasible"] == len(feasible) and 0 < len(feasible) < len(table)
        assert truth["optimum_fidelity"] >= eps


def test_levels_reparametrisation_covers_exactly_the_valid_space(bench, setup):
    space, table = setup
    groups = bench.level_groups(space, table.archs)
    assert sum(len(names) for names, _ in groups.values()) == len(space.decisions())
    assert math.prod(len(choices) for _, choices in groups.values()) == len(table)
    with pytest.raises(ValueError, match="product"):
        bench.level_groups(space, table.archs[:-1])


def test_random_exhausts_the_space_and_finds_the_optimum(bench, setup):
    space, table = setup
    eps = bench.choose_epsilons(table, [0.8])[0]
    run = bench.search("random", space, table, eps, len(table), seed=0)
    assert run["evaluations"] == len(table) and run["invalid"] == run["repeated"] == 0
    assert run["curve"][-1] == bench.ground_truth(table, eps)["optimum"]


@pytest.mark.slow
def test_compare_reports_each_method_consistently(bench, setup):
    space, table = setup
    budgets, seeds = [3, 6], 2
    epsilons = bench.choose_epsilons(table, [0.5, 0.8])
    result = bench.compare(space, table, epsilons, budgets, seeds, n_initial=2, max_retries=300)

    assert [t["epsilon"] for t in result["truths"]] == epsilons
    assert len(result["rows"]) == len(epsilons) * len(budgets)
    assert len(result["runs"]) == len(epsilons) * seeds * len(bench.METHODS)
    for run in result["runs"]:
        curve = run["curve"]
        assert run["evaluations"] == len(curve) <= max(budgets)
        assert all(b >= a for a, b in zip(curve[1:], curve))          # best so far never rises
        assert run["overhead_s"] >= 0
        if run["method"] in ("eps_bo", "random", "optuna-levels"):
            assert run["invalid"] == 0 and run["evaluations"] == max(budgets)
    for row in result["rows"]:
        opt = row["optimum"]
        assert set(row["methods"]) == set(bench.METHODS)
        for name, m in row["methods"].items():
            assert len(m["best"]) == seeds
            assert all(b >= opt for b in m["best"]), name          # nobody beats the optimum
            scored = [result["penalty"] if math.isinf(b) else b for b in m["best"]]
            assert m["mean_best"] == pytest.approx(np.mean(scored))
            assert m["mean_ratio"] == pytest.approx(np.mean(scored) / opt)
            assert m["hits"] == sum(b == opt for b in m["best"])
            assert m["misses"] == sum(math.isinf(b) for b in m["best"])
        for peer in ("random", "optuna", "optuna-levels"):
            assert row["ratios"][f"eps_bo/{peer}"] == pytest.approx(
                row["methods"]["eps_bo"]["mean_best"] / row["methods"][peer]["mean_best"])
    assert set(result["overhead"]) == set(bench.METHODS)
    assert all(result["overhead"][m]["evaluations"] > 0 for m in ("eps_bo", "random", "optuna-levels"))
    # raw optuna may get nothing valid here: 36 valid of 2^15 combinations, 300 retries


def test_best_at_reads_the_curve(bench):
    assert bench.best_at([], 5) == math.inf
    assert bench.best_at([math.inf, 3.0, 2.0], 1) == math.inf
    assert bench.best_at([math.inf, 3.0, 2.0], 2) == 3.0
    assert bench.best_at([math.inf, 3.0, 2.0], 10) == 2.0        # fewer evaluations than N


@pytest.mark.slow
def test_main_prints_and_writes_json(bench, setup, monkeypatch, tmp_path, capsys):
    space, table = setup
    monkeypatch.setattr(bench, "make_space", lambda params=None: space)
    monkeypatch.setattr(bench, "build_table", lambda *a, **k: table)
    out = tmp_path / "res.json"
    result = bench.main(["--budget", "4", "--seeds", "1", "--quantiles", "0.5", "--n-initial", "2",
                         "--quiet", "--json", str(out)])
    printed = capsys.readouterr().out
    for name in (*bench.METHODS, "eps_bo/random", "eps_bo/optuna", "Ground truth",
                 "Strategy overhead"):
        assert name in printed
    data = json.loads(out.read_text())
    assert data["rows"][0]["optimum"] == result["rows"][0]["optimum"]
    assert data["budgets"] == [4] and data["seeds"] == 1


def test_table_cache_round_trip(bench, setup, tmp_path):
    space, table = setup
    params = {**TINY, "note": "test"}
    path = tmp_path / f"eps_bo_vs_peers-{bench.table_key(params)}.json"
    path.write_text(json.dumps({"seconds": 1.5, "rows": table.to_json()}))
    read = bench.build_table(space, params, tmp_path)       # found: nothing is scored
    assert read.cached and read.seconds == 1.5
    assert [a.id for a in read.archs] == [a.id for a in table.archs]
    assert np.array_equal(read.gmacs, table.gmacs) and np.array_equal(read.fidelity, table.fidelity)
    assert bench.table_key(params) != bench.table_key(TINY)
