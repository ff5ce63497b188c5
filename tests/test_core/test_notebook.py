"""The Python API in a real Jupyter kernel: progress as plain text lines, no widget warnings."""
from __future__ import annotations

import pytest

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")


def _execute(code: str, timeout: float = 300) -> list[tuple[str, str]]:
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        msg_id = kc.execute(code)
        outs: list[tuple[str, str]] = []
        while True:
            msg = kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                outs.append((msg["content"]["name"], msg["content"]["text"]))
            elif kind in ("display_data", "execute_result"):
                outs.append((kind, str(msg["content"]["data"])))
            elif kind == "error":
                outs.append(("error", msg["content"]["evalue"]))
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return outs
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_run_in_a_notebook_prints_plain_progress_and_no_widget_warnings(tmp_path):
    outs = _execute(f'''
import nasframe
exp = nasframe.Experiment.from_dict({{"name": "nb", "seed": 0,
    "search_space": {{"name": "conv_denoiser", "params": {{"input_size": 16}}}},
    "objectives": [{{"name": "params"}}], "budget": {{"trials": 6}}, "references": False}})
run = exp.run(out={str(tmp_path / "run")!r}, quiet=False)
print("trials", len(run.trials()))
''')
    text = "".join(t for _, t in outs)
    assert ("error", ) not in [(k,) for k, _ in outs], text
    assert "trials 6" in text
    assert "search 6/6" in text                 # the last progress line
    assert "ipywidgets" not in text and "IProgress" not in text
    assert not [k for k, _ in outs if k == "display_data"]     # no widget or live display
