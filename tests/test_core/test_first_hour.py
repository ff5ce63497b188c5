"""The first hour of a new user (issue 23): one CLI convention, every problem of a file at
once, counts that agree, messages that say what to do. One tiny run is shared by the
module; the CLI runs in this process (``cli_here``) except where the process boundary is
the point (a closed pipe)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, cli_here

TINY = {
    "name": "first",
    "seed": 0,
    "search_space": {"name": "conv_denoiser", "params": {"depths": [1, 2], "widths": [4, 8],
                                                         "kernels": [3], "input_size": 16}},
    "objectives": [{"name": "params"}, {"name": "gmacs"}],
    "strategy": {"name": "random"},
    "budget": {"trials": 3},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run with the default references: (experiment file, run directory)."""
    root = tmp_path_factory.mktemp("first")
    exp = root / "exp.yaml"
    exp.write_text(yaml.safe_dump(TINY))
    out = root / "run"
    res = cli_here("run", str(exp), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return exp, out, res


def test_references_are_on_by_default_and_the_counts_agree(run):
    exp, out, res = run
    # the run says how many references it added beside the budget's trials ...
    assert "3 trials + 2 reference architectures" in res.stdout + res.stderr
    # ... and `trials` lists them all, the references marked by their origin
    rows = json.loads(cli_here("trials", str(out), "-f", "json").stdout)
    assert len(rows) == 5
    assert sorted(r["origin"] for r in rows if r["origin"].startswith("reference:")) == [
        "reference:largest", "reference:smallest"]
    status = cli_here("status", str(out), "-f", "json")
    doc = json.loads(status.stdout)
    assert status.returncode == 0 and doc["state"] == "finished"


def test_status_says_finished(run):
    _, out, _ = run
    res = cli_here("status", str(out))
    assert res.returncode == 0 and "finished (trial budget)" in res.stdout


def test_one_format_flag_everywhere(run):
    _, out, _ = run
    for cmd in ("trials", "front", "status"):
        for fmt in ("table", "json", "csv"):
            res = cli_here(cmd, str(out), "-f", fmt)
            assert res.returncode == 0, (cmd, fmt, res.stderr)
            if fmt == "json":
                json.loads(res.stdout)
            if fmt == "csv":
                assert "," in res.stdout.splitlines()[0]
        bad = cli_here(cmd, str(out), "-f", "yaml")
        assert bad.returncode == 2 and "table" in bad.stderr and "json" in bad.stderr


def test_sort_by_a_column_that_is_not_there_suggests_one(run):
    _, out, _ = run
    res = cli_here("trials", str(out), "--sort", "param")
    assert res.returncode == 2
    assert "--sort param: no such column; did you mean 'params'?" in res.stderr
    assert "Traceback" not in res.stderr
    ok = cli_here("trials", str(out), "--sort", "params", "-f", "json")
    values = [r["params"] for r in json.loads(ok.stdout)]
    assert values == sorted(values)


def test_analyse_without_a_measured_latency_says_what_to_add(run):
    _, out, _ = run
    for word in ("analyse", "analyze"):
        res = cli_here(word, str(out))
        assert res.returncode == 2, res.stdout
        assert "no measured latency" in res.stderr and "backend: onnxruntime" in res.stderr
    assert not list(out.glob("analysis*.png"))


def test_the_front_plot_names_each_front_member_by_its_file(run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    _, out, _ = run
    seen: list[str] = []
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        seen.extend(t.get_text() for ax in self.axes for t in ax.texts)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    res = cli_here("export", str(out), "-o", str(tmp_path / "exported"))
    assert res.returncode == 0, res.stderr
    ids = {p.stem for p in (tmp_path / "exported" / "front").glob("*.yaml")}
    # every front member's id is on the plot (a reference on the front: "smallest (<id>)")
    assert ids and all(any(i in text for text in seen) for i in ids), (ids, seen)


def test_plugins_filter_by_kind_and_pattern_with_descriptions():
    res = cli_here("plugins", "objective", "-f", "json")
    rows = json.loads(res.stdout)
    assert res.returncode == 0 and rows
    assert {r["kind"] for r in rows} == {"objective"}
    assert all(r["what"] for r in rows)
    names = {r["name"] for r in json.loads(cli_here("plugins", "sd*", "-f", "json").stdout)}
    assert names and all(n.startswith("sd") for n in names)
    none = cli_here("plugins", "zzz*")
    assert none.returncode == 2 and "no component matches 'zzz*'; components: " in none.stderr


def test_every_subcommand_help_has_a_description_and_an_example():
    from nasframe.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert p.description, name
        assert "nasframe " + (name if name != "analyze" else "analyse") in (p.epilog or ""), name
    assert "default: 8080" in sub.choices["dashboard"].format_help()


def test_export_model_of_an_untrained_space_says_the_weights_are_untrained(run, tmp_path):
    exp, out, _ = run
    front = sorted((out / "front").glob("*.yaml"))[0]
    res = cli_here("export-model", str(exp), "--out", str(out), "--arch", str(front),
                   "-o", str(tmp_path / "model.onnx"))
    assert res.returncode == 0, res.stderr
    assert "untrained" in (res.stdout + res.stderr)
    assert (tmp_path / "model.onnx").exists()


def test_validate_reports_every_problem_at_once(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(TINY))
    doc["objectives"] = [{"name": "params", "direction": "minimize"},
                         {"name": "gmacs", "direction": "sideways"}]
    doc["search_space"]["params"]["widthz"] = [4]
    doc["strategy"] = {"name": "nsga"}
    doc["budget"] = {"trials": -3}
    exp = tmp_path / "bad.yaml"
    exp.write_text(yaml.safe_dump(doc))
    res = cli_here("validate", str(exp))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    text = "\n".join(lines)
    assert len(lines) == 4, res.stderr
    assert "objectives[1].direction: 'sideways' is not a direction; write min or max" in text
    assert "budget.trials: Input should be greater than or equal to 1" in text
    assert "search_space.params.widthz: unknown field; did you mean 'widths'?" in text
    assert "unknown strategy 'nsga'; here that is `ens`" in text and "sampler: nsga2" in text
    # the words people type are read: minimize here, higher/maximise elsewhere
    assert "objectives[0]" not in text


def test_a_closed_pipe_ends_quietly(run):
    """`nasframe trials RUN | head -1`: no BrokenPipeError message, the exit of a pipe."""
    _, out, _ = run
    proc = subprocess.Popen([sys.executable, "-m", "nasframe", "trials", str(out), "-f", "csv"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                 # what `head -1` does after its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception ignored" not in err
