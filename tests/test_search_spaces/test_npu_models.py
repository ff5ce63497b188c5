"""Every export path compiles for the Hexagon NPU (QNN EP, HTP emulated, CPU fallback off) and
computes what fp32 computes: hybrid_unet's teacher, a hybrid and all-SSM, an sd_unet U-Net; and
hybrid_unet's pixel (un)shuffle in a rank-4 form that equals torch's exactly (unshuffle: strided
slices; shuffle: torch's own op, exported as ``DepthToSpace``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nasframe.architecture import Architecture
from nasframe.candidate import Candidate

pytest.importorskip("onnxscript")
from nasframe_search_spaces.hybrid_unet.network import (Downsample, PixelShuffle,  # noqa: E402
                                                        PixelUnshuffle, Upsample)

#: float graphs at fp16 on the NPU: this close to fp32 or better
TARGET_DB = 40.0
needs_qnn = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("onnxruntime_qnn") is None,
    reason="the NPU check needs onnxruntime-qnn (pip install 'nasframe[npu]')")


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 5, 4, 12), (1, 16, 64, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
def test_rank4_pixel_shuffles_equal_torch(shape, dtype):
    x = (torch.randn(*shape) * 1000).to(dtype)
    down = PixelUnshuffle(2)(x)
    assert torch.equal(down, nn.PixelUnshuffle(2)(x))
    assert torch.equal(PixelShuffle(2)(down), x)
    y = (torch.randn(shape[0], shape[1] * 4, *shape[2:]) * 1000).to(dtype)
    assert torch.equal(PixelShuffle(2)(y), nn.PixelShuffle(2)(y))



def test_rank4_pixel_shuffles_take_any_factor():
    x = torch.randn(2, 5, 9, 12)
    assert torch.equal(PixelUnshuffle(3)(x), nn.PixelUnshuffle(3)(x))
    assert torch.equal(PixelShuffle(3)(PixelUnshuffle(3)(x)), x)


def test_resampling_exports_no_tensor_above_rank_4(tmp_path):
    import onnx

    from nasframe.deploy import export_module

    net = nn.Sequential(Downsample(8), Upsample(16)).eval()    # 8 -> 16 -> 8 channels
    path = tmp_path / "resample.onnx"
    export_module(net, (torch.randn(1, 8, 16, 16),), "onnx", path)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.value_info, *model.graph.output]}
    assert ranks and max(ranks.values()) <= 4, {k: r for k, r in ranks.items() if r > 4}
    ops = {n.op_type for n in model.graph.node}
    # unshuffle: strided slices joined; shuffle: one DepthToSpace (not a rank-6 pair)
    assert ops <= {"Conv", "Reshape", "Slice", "Concat", "DepthToSpace"}, ops
    assert "DepthToSpace" in ops and "Transpose" not in ops


def _check(space, arch, tmp_path, part=None):
    from nasframe.deploy import export_module, exportable
    from nasframe_objectives.qnn_htp import check_graph

    cand = Candidate(space, arch, seed=0)
    model, inputs = cand.module(part), cand.example_inputs(part=part)
    path = tmp_path / "model.onnx"
    export_module(exportable(space, arch, model, part), inputs, "onnx", path)
    return check_graph(path, inputs=inputs, context=tmp_path / "model_ctx.onnx")


def _hybrid(kind):
    from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=64)
    stages = [d.name for d in space.decisions()]
    encoder = {"enc1", "enc2", "enc3", "latent"}
    arch = {"teacher": space.uniform("transformer"), "all_ssm": space.uniform("ssm"),
            "mixed": Architecture({s: "ssm" if s in encoder else "transformer" for s in stages})}
    return space, arch[kind]


@pytest.mark.slow
@needs_qnn
def test_tiny_hybrid_teacher_compiles_for_the_npu(tmp_path):
    report = _check(*_hybrid("teacher"), tmp_path)
    assert report.compiles, report.summary()
    assert report.unsupported == [] and report.psnr_db >= TARGET_DB, report.summary()
    assert (tmp_path / "model_ctx_qnn.bin").is_file()


@needs_qnn
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mixed", "all_ssm"])
def test_tiny_hybrids_with_ssm_blocks_compile_for_the_npu(tmp_path, kind):
    report = _check(*_hybrid(kind), tmp_path)
    assert report.compiles, report.summary()
    assert report.unsupported == []
    assert report.psnr_db >= TARGET_DB, report.summary()


@needs_qnn
@pytest.mark.slow
@pytest.mark.parametrize("part", [None, "vae_decoder"])
def test_sd_unet_tiny_parts_compile_for_the_npu(tmp_path, part):
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    space = SDUNetSpace(preset="tiny")
    report = _check(space, space.reference_architectures()["nanosd"], tmp_path, part)
    assert report.compiles, report.summary()
    assert report.unsupported == [] and report.psnr_db >= TARGET_DB, report.summary()
