"""`nasframe analyse RUN_DIR`: Kendall tau of each proxy vs each measured latency, over a real
run (conv_denoiser, params/gmacs proxies, latency timed with torch), with the scatter plots."""
from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from scipy.stats import kendalltau

from conftest import cli_here


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyse")
    doc = {
        "name": "analyse",
        "seed": 1,
        "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
        "objectives": [{"name": "params"}, {"name": "gmacs"},
                       {"name": "latency", "params": {"options": {"warmup": 1, "repeats": 3,
                                                                  "threads": 1}}}],
        "strategy": {"name": "random"},
        "budget": {"trials": 8},
        "references": False,
    }
    exp = tmp / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    res = cli_here("run", str(exp), "--out", str(tmp / "run"), "--quiet", "--no-export")
    assert res.returncode == 0, res.stderr
    return tmp / "run"


def _values(run_dir):
    con = sqlite3.connect(run_dir / "trials.db")
    try:
        rows = con.execute("SELECT \"values\" FROM trials WHERE status='complete' "
                           "ORDER BY number").fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows]


@pytest.mark.slow
def test_analyse_prints_tau_per_proxy_and_writes_the_plot(run_dir):
    res = cli_here("analyse", str(run_dir), "-f", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["proxies"] == ["params", "gmacs"] and doc["measured"] == ["latency"]
    values = _values(run_dir)
    for c in doc["correlations"]:
        want = kendalltau([v[c["proxy"]] for v in values], [v["latency"] for v in values])
        assert c["n"] == len(values) == 8
        assert c["tau"] == pytest.approx(want.statistic)
        assert c["p_value"] == pytest.approx(want.pvalue)
        assert c["measured_device"].startswith("cpu (")
    png = run_dir / "proxy_check.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "proxy_check.json").read_text()) == doc
    table = cli_here("analyse", str(run_dir), "--no-plot")
    assert table.returncode == 0
    assert "Kendall tau" in table.stdout and "gmacs" in table.stdout


def test_analyse_picks_keys_and_rejects_unknown_ones(run_dir, tmp_path):
    res = cli_here("analyse", str(run_dir), "--proxies", "gmacs", "-f", "json", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert [c["proxy"] for c in json.loads(res.stdout)["correlations"]] == ["gmacs"]
    assert (tmp_path / "proxy_check.png").exists()
    bad = cli_here("analyse", str(run_dir), "--proxies", "macs", "--no-plot")
    assert bad.returncode == 2
    assert "no objective 'macs' in this run; its objectives: params, gmacs, latency" in bad.stderr


@pytest.mark.slow
def test_a_run_without_measured_latency_says_so(tmp_path):
    doc = {"name": "nolat", "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
           "objectives": [{"name": "params"}, {"name": "gmacs"}], "strategy": {"name": "random"},
           "budget": {"trials": 3}, "references": False}
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    assert cli_here("run", str(exp), "--out", str(tmp_path / "run"), "--quiet",
                   "--no-export").returncode == 0
    res = cli_here("analyse", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr          # nothing to analyse: say what to add
    assert "nothing to analyse: no measured latency" in res.stderr
    assert "name: latency" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "proxy_check.png").exists()   # no blank plot
    res = cli_here("analyze", str(tmp_path / "run"))               # the other spelling
    assert res.returncode == 2 and "nothing to analyse" in res.stderr
