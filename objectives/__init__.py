"""Built-in objectives: ``params``, ``gmacs``, ``latency``, ``quick_psnr``, ``psnr``,
``ssim``, ``transformer_count`` and ``fidelity``.

A plugin like any other (entry point ``builtin_objectives`` in the ``nasframe``
group). The classes are imported inside the hook so that loading the plugin
stays cheap. Other plugins can teach ``gmacs`` new ops with
:func:`objectives.cost.register_op_handle`.
"""
from nasframe import hookimpl


@hookimpl
def register_objectives(registry):
    from objectives.cost import GMACs, Params
    from objectives.fidelity import Fidelity
    from objectives.latency import Latency
    from objectives.quick_psnr import QuickPSNR
    from objectives.restoration import PSNR, SSIM, TransformerCount

    for cls in (Params, GMACs, Latency, QuickPSNR, PSNR, SSIM, TransformerCount, Fidelity):
        registry.add(cls)
