"""Built-in objectives: ``params``, ``gmacs``, ``latency``, ``latency_lut``, ``quick_psnr``,
``psnr``, ``ssim``, ``finetuned_psnr``, ``transformer_count``, ``fidelity``, ``multitask_psnr``,
``deploy_memory``, ``npu_compiles`` and ``npu_fidelity``; the ``torch``, ``onnxruntime``,
``executorch`` and ``qai_hub`` latency backends; and the ``npu`` deploy check.

A plugin like any other (entry point ``builtin_objectives`` in the ``nasframe``
group). The classes are imported inside the hook so that loading the plugin
stays cheap; their heavy dependencies (fvcore, scikit-image) are imported
only when they are used, and a missing one makes the objective unavailable
(``nasframe plugins`` says which extra installs it).
"""
from nasframe import hookimpl


@hookimpl
def register_objectives(registry):
    from nasframe_objectives.cost import GMACs, Params
    from nasframe_objectives.fidelity import Fidelity
    from nasframe_objectives.latency import Latency
    from nasframe_objectives.latency_lut import LatencyLUT
    from nasframe_objectives.multitask import DeployMemory, MultitaskPSNR
    from nasframe_objectives.npu import NpuCompiles, NpuFidelity
    from nasframe_objectives.quick_psnr import QuickPSNR
    from nasframe_objectives.restoration import PSNR, SSIM, FinetunedPSNR, TransformerCount

    for cls in (Params, GMACs, Latency, LatencyLUT, QuickPSNR, PSNR, SSIM, TransformerCount,
                Fidelity, MultitaskPSNR, DeployMemory, FinetunedPSNR, NpuCompiles, NpuFidelity):
        registry.add(cls)


@hookimpl
def register_latency_backends(registry):
    from nasframe_objectives.executorch_backend import ExecuTorchBackend
    from nasframe_objectives.latency import TorchBackend
    from nasframe_objectives.ort_backend import OnnxRuntimeBackend
    from nasframe_objectives.qai_hub_backend import QaiHubBackend

    registry.add(TorchBackend)
    registry.add(OnnxRuntimeBackend)
    registry.add(ExecuTorchBackend)
    registry.add(QaiHubBackend)


@hookimpl
def register_deploy_checks(registry):
    from nasframe_objectives.npu import NpuCheck

    registry.add(NpuCheck)
