"""The latency objective's ``anchor``: each candidate timed alternately with a reference
architecture, its value the ratio times the anchor's own latency (timed once per run)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

from conftest import cli_here
from nasframe import Candidate
from nasframe.backends import interleaved_times, paired_times
from nasframe.errors import ConfigError
from nasframe.plugins import get_plugins
from nasframe.testing import plugin_context


def _phased(ms: float, calls: list[str], name: str, phase: dict[str, float]):
    def run() -> None:
        calls.append(name)
        phase["n"] += 1
        time.sleep(ms * (3.0 if phase["n"] > 12 else 1.0) / 1e3)   # the machine slows down
    return run


def test_paired_times_alternate_and_keep_the_ratio_through_a_slow_phase():
    calls: list[str] = []
    phase = {"n": 0}
    fast, slow = _phased(2.0, calls, "a", phase), _phased(4.0, calls, "b", phase)
    a, b = paired_times(fast, slow, warmup=1, repeats=10)
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 5
    # alone, each median moves with the phase; side by side their ratio does not
    assert np.median(a) / np.median(b) == pytest.approx(0.5, abs=0.1)
    assert max(a) > 2.5 * min(a)
    # the first half of a's passes against the second half of b's: what two candidates
    # timed minutes apart would see without an anchor
    assert np.median(a[:5]) / np.median(b[5:]) < 0.3


def test_interleaved_times_give_each_runner_the_same_share_of_a_slow_phase():
    calls: list[str] = []
    phase = {"n": 0}
    # three runners of work 1 : 1 : 2, the machine 3x slower after the 14th call
    runners = [_phased(ms, calls, name, phase) for ms, name in ((2.0, "a"), (2.0, "b"), (4.0, "c"))]
    rounds = []
    times = interleaved_times(runners, warmup=1, repeats=8, seed=5,
                              on_round=lambda: rounds.append(len(calls)))
    assert [len(t) for t in times] == [8, 8, 8] and rounds == [3 + 3 * i for i in range(1, 9)]
    timed = [calls[3 + 3 * i:6 + 3 * i] for i in range(8)]
    assert all(sorted(r) == ["a", "b", "c"] for r in timed)      # one pass of each per round
    assert len({tuple(r) for r in timed}) > 1                    # in a new order
    # each sees fast and slow rounds alike: sums over the passes keep the 1 : 1 : 2 of the
    # work (one after the other, c would have had only slow passes: 6x a)
    a, b, c = (sum(t) for t in times)
    assert b / a == pytest.approx(1.0, abs=0.35) and c / a == pytest.approx(2.0, abs=0.7)


@pytest.fixture
def space_ctx(tmp_path):
    plugins = get_plugins()
    space = plugins.search_spaces.create("conv_denoiser", {"input_size": 16})
    return plugins, space, plugin_context(tmp_path)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_anchored_values_are_the_ratio_times_the_anchors_latency(space_ctx, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    import nasframe_objectives.latency as latency

    plugins, space, ctx = space_ctx
    options = {"repeats": 6, "warmup": 1}
    obj = plugins.objectives.create("latency", {"backend": backend, "anchor": "largest",
                                                "anchor_repeats": 10, "options": options})
    assert obj.check_space(space) is None
    space.prepare(ctx, frozenset(obj.requirements()))
    obj.prepare(space, ctx)
    values = []
    for seed in range(2):
        arch = space.sample(np.random.default_rng(seed))
        value, prov = obj(Candidate(space, arch), ctx)
        anchor = prov.details["anchor"]
        assert prov.kind == "measured" and prov.backend == backend
        assert anchor["name"] == "largest" and anchor["repeats"] == 10
        assert value == pytest.approx(anchor["ratio"] * anchor["ms"])
        assert prov.details["repeats"] == 6 and anchor["window_ms"] > 0
        assert prov.details["threads"] >= 1          # the backend's settings, as measure() says
        if backend == "onnxruntime":
            assert prov.details["providers"] == ["CPUExecutionProvider"]
            assert prov.details["export"]["max_rel_error"] <= 1e-4
        values.append(anchor["ms"])
    # one anchor latency per run, kept in the run directory ...
    files = list((ctx.run_dir / "latency_anchor").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["ms"] == values[0] == values[1]
    # ... which a new process (a resumed run, another worker) reads instead of timing again
    latency._ANCHORS.clear()
    again = plugins.objectives.create("latency", {"backend": backend, "anchor": "largest",
                                                  "anchor_repeats": 10, "options": options})
    ref = space.reference_architectures()["largest"]
    value, prov = again(Candidate(space, ref), ctx)
    assert prov.details["anchor"]["ms"] == values[0]
    assert 0.5 < prov.details["anchor"]["ratio"] < 2.0       # the anchor against itself


def test_an_anchor_the_space_does_not_have_is_refused_at_validate(tmp_path):
    doc = {"name": "anchor", "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
           "objectives": [{"name": "params"},
                          {"name": "latency", "params": {"anchor": "largets"}}],
           "budget": {"trials": 2}}
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    res = cli_here("validate", str(exp))
    assert res.returncode == 2
    assert ("objectives[1]: params.anchor: search space 'conv_denoiser' has no reference "
            "architecture 'largets'; did you mean 'largest'?") in res.stderr


def test_an_anchor_needs_a_backend_that_times_in_this_process(monkeypatch):
    pytest.importorskip("qai_hub")
    monkeypatch.setenv("QAI_HUB_API_TOKEN", "abc")
    with pytest.raises(ConfigError, match=r"objectives\[1\]\.params\.anchor: backend 'qai_hub' "
                                          r"cannot time two models alternately"):
        get_plugins().objectives.create("latency", {
            "backend": "qai_hub", "anchor": "largest", "options": {"check_device": False}},
            where="objectives[1]")
    with pytest.raises(ConfigError, match=r"params\.anchor: an anchor is timed as a float graph"):
        get_plugins().objectives.create("latency", {
            "backend": "onnxruntime", "anchor": "largest", "graph": "quantised"},
            where="objectives[1]")
