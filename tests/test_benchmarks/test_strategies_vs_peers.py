"""benchmarks/strategies_vs_peers.py on tiny settings, against synthetic tables.

The spaces are the benchmark's (stage-granularity hybrid_unet, a small sd_unet), but
the values are made-up functions of the architecture: no model is trained or scored.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import load_script

pytest.importorskip("pymoo")
pytest.importorskip("botorch")
pytest.importorskip("diffusers")

#: 36 valid architectures out of 2^15 decision combinations
TINY_SD = {"preset": "tiny", "pairs": ["full", "removed"], "widths": [1.0], "mid": "keep",
           "innermost": "remove"}


@pytest.fixture(scope="module")
def bench():
    module = load_script("strategies_vs_peers")   # in sys.modules: its forked workers find it
    yield module
    sys.modules.pop(module.__name__, None)


def _jitter(arch) -> float:
    return int(arch.id[:4], 16) / 65536


@pytest.fixture(scope="module")
def hybrid(bench):
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

    space = HybridUNetSpace(preset="tiny", granularity="stage")
    psnr = {a.id: 28 + 0.5 * space.transformer_count(a) ** 0.7 + _jitter(a)
            for a in space.enumerate()}
    return bench.hybrid_bench(space, psnr)


@pytest.fixture(scope="module")
def sd(bench):
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    space = SDUNetSpace(**TINY_SD)
    archs = list(space.enumerate())
    kept = np.array([sum(v == "full" for v in a.values()) for a in archs], dtype=float)
    jitter = np.array([_jitter(a) for a in archs])

    class Table:      # the shape of eps_bo_vs_peers.Table
        pass

    t = Table()
    t.archs, t.gmacs, t.fidelity = archs, 0.01 * kept + 0.001 * jitter, 2.0 * kept - 6.0 * jitter
    return bench.sd_unet_bench(space, t)


def _methods(bench):
    from nasframe.plugins import get_plugins

    return [m for m in bench.METHODS if not get_plugins().strategies.entry(m.split("-")[0]).missing()]


@pytest.mark.slow
def test_every_method_side_by_side_on_both_spaces(bench, hybrid, sd, capsys):
    methods = _methods(bench)
    assert {"ens", "random"} <= set(methods)
    for b in (hybrid, sd):
        # eps_bo's GP fits take seconds each on 2 shared cores: its random start only here
        b.params["eps_bo"] = {**b.params["eps_bo"], "n_initial": 8}
        res = bench.compare(b, methods, [4, 8], seeds=1, jobs=2 if b is sd else 1)
        bench.report(b, res, [4, 8], 1)
        for m, r in res.items():
            s4, s8 = r["scores"]["4"][0], r["scores"]["8"][0]
            assert r["evaluated"] == [8]          # distinct valid evaluations only
            assert r["ms_per_proposal"][0] > 0
            if b.higher:                          # hypervolume ratio: more budget, not less
                assert 0 < s4 <= s8 <= 1 + 1e-9
            else:                                 # best feasible / optimum
                assert s4 >= s8 >= 1 - 1e-9
    out = capsys.readouterr().out
    assert "## hybrid" in out and "## sd_unet" in out
    for m in methods:
        assert f"| {m} |" in out
    assert "vs ens N=8" in out and "vs eps_bo N=8" in out


@pytest.mark.slow
def test_scores_reach_one_when_the_whole_space_is_evaluated(bench, hybrid, sd):
    for b in (hybrid, sd):
        size = len(b.table)
        trials, _ = bench.search(b, "random", 0, size + 5)
        own = [t for t in trials if not t.origin.startswith("reference:")]
        refs = len(trials) - len(own)
        assert len({t.arch.id for t in trials}) == size
        assert len(own) == size - refs
        assert b.score(trials) == pytest.approx(1.0)
