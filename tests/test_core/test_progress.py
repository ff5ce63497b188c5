"""Progress where no live bar can be drawn: output to a file or a pipe (``nohup``, a CI log)
gets plain text lines now and then, not nothing until the step ends."""
import io
import time

import yaml
from rich.console import Console
from rich.progress import Progress

from conftest import run_cli
from nasframe import progress


def test_to_a_file_progress_is_plain_lines_at_most_every_few_seconds(monkeypatch):
    buf = io.StringIO()
    console = Console(file=buf)
    assert not console.is_terminal and progress.plain(console)
    monkeypatch.setattr(progress, "FILE_EVERY", 0.2)
    with progress.step_progress(console) as bar:
        task = bar.add_task("teacher", total=6, info="")
        for i in range(6):
            bar.advance(task)
            bar.update(task, info=f"loss {1 / (i + 1):.3f}")
            time.sleep(0.05)
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("teacher 6/6") and "loss 0.167" in lines[-1]
    # the first change prints, then at most one line per 0.2 s, and the last one
    assert 2 <= len(lines) <= 4, lines


def test_in_a_terminal_progress_is_rich_live_bar():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert not progress.plain(console)
    assert isinstance(progress.step_progress(console), Progress)
    assert isinstance(progress.search_progress(console), Progress)


def test_status_to_a_file_is_one_line():
    buf = io.StringIO()
    with progress.status(Console(file=buf), "exporting") as s:
        s.update("still exporting")
    assert buf.getvalue() == "exporting\n"


def test_cli_run_piped_to_a_log_shows_the_search_progress(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "log", "search_space": {"name": "conv_denoiser", "params": {
            "depths": [1, 2], "widths": [4, 8], "kernels": [3], "input_size": 16}},
        "objectives": [{"name": "params"}, {"name": "gmacs"}],
        "strategy": {"name": "grid"}, "budget": {"trials": 4}}))
    res = run_cli("run", str(exp), "--out", str(tmp_path / "run"), "--no-export")
    assert res.returncode == 0, res.stderr
    assert "search 4/4" in res.stderr, res.stderr
    quiet = run_cli("run", str(exp), "--out", str(tmp_path / "quiet"), "--no-export", "--quiet")
    assert quiet.returncode == 0 and "search 4/4" not in quiet.stderr
