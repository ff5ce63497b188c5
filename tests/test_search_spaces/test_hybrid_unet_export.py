"""hybrid_unet export: the ``export`` scan (plain tensor ops) agrees with the other scans, and a
hybrid with SSM blocks exports to ONNX that ONNX Runtime runs within 1e-4 of PyTorch."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import cli_here

from nasframe.deploy import exportable
from nasframe_search_spaces.hybrid_unet import scan as sc
from nasframe_search_spaces.hybrid_unet.blocks import SS2D, SSMBlock
from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace


def _scan_inputs(b, L, h, p, g, n, seed=0, dt_shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=gen, dtype=torch.float64) + dt_shift)
    A = -torch.rand(h, generator=gen, dtype=torch.float64) * 4 - 0.05
    B = torch.randn(b, L, g, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, L, g, n, generator=gen, dtype=torch.float64)
    D = torch.randn(h, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("shape,chunk", [
    ((1, 37, 3, 5, 1, 4), 16),       # padding, several heads per group
    ((2, 600, 4, 8, 2, 4), 64),      # two groups
    ((1, 2100, 2, 6, 1, 8), 16),     # 132 chunks: the carry in groups (two levels)
    ((1, 20, 1, 4, 1, 3), 64),       # one chunk
])
def test_export_scan_matches_the_recurrence(shape, chunk):
    inputs = _scan_inputs(*shape)
    ref = sc.scan_sequential(*inputs)
    # float64: the algorithm itself; float32: the precision an exported graph runs at
    y64 = sc.scan_export(*inputs, chunk=chunk)
    assert torch.allclose(y64, ref, rtol=0, atol=1e-10 * ref.abs().max())
    y32 = sc.scan_export(*(t.float() for t in inputs), chunk=chunk).double()
    assert (y32 - ref).abs().max() / ref.abs().max() < 1e-5
    chunked = sc.scan_chunked(*(t.float() for t in inputs), chunk=chunk).double()
    assert (y32 - chunked).abs().max() / ref.abs().max() < 1e-5


def test_export_backend_is_selectable_and_picked_while_exporting():
    x = torch.zeros(1, 4, 1, 1)
    assert "export" in sc.BACKENDS
    assert sc.resolve_backend("export", x) == "export"
    assert sc.resolve_backend("auto", x) != "export"
    with torch.no_grad():
        inputs = [t.float() for t in _scan_inputs(1, 50, 2, 3, 1, 4)]
        assert torch.allclose(sc.selective_scan(*inputs, backend="export", chunk=16),
                              sc.selective_scan(*inputs, backend="chunked", chunk=16), atol=1e-5)


@pytest.mark.parametrize("orders,mix,first", [(1, "sum", 0), (2, "split", 1), (4, "sum", 2),
                                              (4, "split", 3)])
def test_ss2d_export_form_is_the_same_function(orders, mix, first):
    torch.manual_seed(0)
    block = SSMBlock(16, d_state=4, headdim=4, orders=orders, mix=mix, first_order=first,
                     chunk=16).eval()
    x = torch.randn(2, 16, 7, 9)      # L = 63: padding of the last chunk
    with torch.no_grad():
        outs = {}
        for backend in ("chunked", "auto", "export"):
            block.ssm.backend = backend
            outs[backend] = block(x)
    scale = outs["chunked"].abs().max()
    assert (outs["export"] - outs["chunked"]).abs().max() / scale < 1e-5
    assert (outs["export"] - outs["auto"]).abs().max() / scale < 1e-5


def test_space_export_module_swaps_the_scan_on_a_copy():
    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16)
    arch = space.uniform("ssm")
    model = space.build(arch).eval()
    ready = exportable(space, arch, model)
    assert ready is not model
    assert {m.backend for m in ready.modules() if isinstance(m, SS2D)} == {"export"}
    assert {m.backend for m in model.modules() if isinstance(m, SS2D)} == {"auto"}
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref, got = model(x), ready(x)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-5


@pytest.mark.slow
def test_export_model_cli_writes_onnx_of_a_hybrid_within_1e4(tmp_path):
    """The issue's done-when: a hybrid with SSM blocks, exported and run in ONNX Runtime."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    exp = tmp_path / "exp.yaml"
    exp.write_text("""
name: hybrid_export
search_space:
  name: hybrid_unet
  params: {preset: tiny, granularity: stage, input_size: 16, network: {ssm: {orders: 2}}}
objectives:
  - name: transformer_count
  - name: params
strategy: {name: random}
budget: {trials: 2}
""")
    arch = tmp_path / "arch.yaml"   # a hybrid: SSM blocks in the encoder and latent
    arch.write_text("enc1: ssm\nenc2: ssm\nenc3: transformer\nlatent: ssm\ndec3: transformer\n"
                    "dec2: ssm\ndec1: transformer\nrefine: ssm\n")
    path = tmp_path / "hybrid.onnx"
    res = cli_here("export-model", str(exp), "--arch", str(arch), "--format", "onnx",
                  "-o", str(path), cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr
    assert "max rel error" in res.stdout and "input inp: [1, 3, 16, 16] float32" in res.stdout
    meta = json.loads((tmp_path / "hybrid.onnx.json").read_text())
    assert meta["max_rel_error"] <= 1e-4 and meta["format"] == "onnx"
    assert meta["input_names"] == ["inp"] and meta["output_shapes"] == [[1, 3, 16, 16]]
    assert meta["versions"]["onnxruntime"]
    # plain ops for NPU-style runtimes: no scan loops, cumulative sums or bool masks
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"Loop", "Scan", "CumSum", "Where", "Trilu", "Softplus", "NonZero"}, ops
    assert not any(d.dim_param for i in graph.graph.input for d in i.type.tensor_type.shape.dim)


# -- float16 on the phone's NPU: QNN's HTP backend, emulated on x86 by onnxruntime-qnn -------

def _htp_session(path):
    """``path`` compiled for the Snapdragon 8 Elite's HTP (soc_model 69, v79) at fp16 with
    CPU fallback off: a node the NPU cannot take fails the compile instead of running on the
    CPU (the settings of issue #21)."""
    import onnxruntime as ort
    import onnxruntime_qnn as qnn

    name = qnn.get_ep_name()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        ort.register_execution_provider_library(name, qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    opts.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(),
                                            "soc_model": "69", "htp_arch": "79",
                                            "enable_htp_fp16_precision": "1"})
    return ort.InferenceSession(str(path), opts)


def _npu_psnr(path, inputs) -> float:
    """PSNR (dB, peak: the reference's range) of the emulated HTP's output against ONNX
    Runtime's CPU output in float32, on ``inputs``."""
    import numpy as np

    from nasframe.deploy import ort_session

    cpu = ort_session(path, 2)
    feed = {i.name: t.numpy() for i, t in zip(cpu.get_inputs(), inputs)}
    ref = cpu.run(None, feed)[0].astype(np.float64)
    got = _htp_session(path).run(None, feed)[0].astype(np.float64)
    assert np.isfinite(got).all()
    mse = float(np.mean((got - ref) ** 2))
    return 10 * np.log10((ref.max() - ref.min()) ** 2 / mse)


def _needs_qnn():
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (QNN's HTP backend, "
                        "emulated on x86) is not installed")
    pytest.importorskip("onnxscript")


def test_ssm_block_runs_on_the_npu_in_float16_within_40_db(tmp_path):
    """Two heads, a column-major and a reversed order, several chunks: every part of the
    export scan, compiled for the HTP at fp16 with CPU fallback off. Without the clamp of
    the exp arguments this was -66 dB: the HTP's fp16 Exp returns -131008 for arguments
    between -184 and -88."""
    _needs_qnn()
    from nasframe.deploy import export_module

    torch.manual_seed(0)
    block = SSMBlock(16, d_state=4, headdim=8, orders=2, first_order=1).eval()
    x = torch.randn(1, 16, 32, 32)
    res = export_module(block, (x,), "onnx", tmp_path / "block.onnx")
    assert res.max_rel_error < 1e-4
    assert _npu_psnr(res.path, (x,)) >= 40


@pytest.mark.slow
def test_tiny_all_ssm_network_runs_on_the_npu_in_float16_within_40_db(tmp_path):
    """Issue #21's check: the `tiny` all-SSM network at 64x64 (random weights), exported as
    `nasframe export-model` does, compiles for the HTP with CPU fallback off and its fp16
    output is within 40 dB of fp32 (was 19.6 dB)."""
    _needs_qnn()
    from nasframe.deploy import export_module

    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=64)
    arch = space.uniform("ssm")
    torch.manual_seed(0)
    model = space.build(arch).eval()
    x = torch.rand(1, 3, 64, 64)
    res = export_module(exportable(space, arch, model), (x,), "onnx", tmp_path / "all_ssm.onnx")
    assert res.max_rel_error < 1e-4
    assert _npu_psnr(res.path, (x,)) >= 40
