"""`device:` honoured by every training and evaluation loop, checked without a GPU.

The loops run on :class:`~nasframe.placement_check.EmulatedDevice`: the CPU, with every
tensor the context's accelerator places marked "on the device" and every op checked.
A loop that forgets to place its model, a batch, a target or an embedding fails here
with CUDA's own error; one that hands a device tensor to numpy fails too. What this
does not prove: factory calls (``torch.zeros`` without ``device=``) are neutral on the
emulated device, and nothing here measures a GPU's speed or numerics (that is
``benchmarks/gpu_check.sh``'s job on a CUDA machine).

The SSM blocks use the ``chunked`` scan: on a real GPU ``auto`` picks mamba-ssm or
chunked; on the emulated (CPU) device it would pick numba, which reads its tensors
through numpy.
"""
import pytest
import torch

from nasframe.candidate import Candidate
from nasframe.capabilities import TrainedWeights
from nasframe.placement_check import EmulatedDevice
from nasframe.testing import plugin_context
from nasframe_objectives.restoration import PSNR, SSIM, FinetunedPSNR
from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

TINY_DATA = {"short_side": 48, "val_size": 16, "patch": 16}


def _ens(**kw):
    return HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=TINY_DATA,
                           network={"ssm": {"backend": "chunked"}},
                           teacher={"steps": 2, "batch_size": 2},
                           distill={"steps": 2, "batch_size": 2}, **kw)


def _unchecked(dev, fn, *args):
    with dev.paused():
        return fn(*args)


def _host_only(dev, tensors):
    return not any(dev.on_device(t) for t in tensors)


@pytest.mark.slow
def test_ens_teacher_distillation_assembly_and_evaluation_run_on_the_device(tmp_path):
    torch.manual_seed(0)
    dev = EmulatedDevice()
    space = _ens()
    ctx = plugin_context(tmp_path, accelerator=dev)
    with dev:
        space.prepare(ctx, frozenset({TrainedWeights}))      # teacher training + distillation
        after_prepare = dev.ops_on_device
        cand = Candidate(space, space.uniform("transformer").replace(enc1="ssm", dec1="ssm"))
        values = {o.name: o(cand, ctx) for o in
                  (PSNR(), SSIM(), FinetunedPSNR(steps=2, eval_every=1))}
    assert after_prepare > 1000 and dev.ops_on_device > after_prepare
    assert dev.placed_modules >= 4 and dev.placed_tensors >= 8
    for name, (value, prov) in values.items():
        assert torch.isfinite(torch.tensor(value)), name
        assert prov.device == "emulated:0"                    # provenance names the device
    # what is kept comes back to the host: the bank, the candidate's shared model
    assert _host_only(dev, space._bank.teacher.values())
    assert _host_only(dev, [t for s in space._bank.ssm.values() for t in s.values()])
    assert _host_only(dev, cand.model.parameters())


def test_a_loop_that_forgets_the_model_fails_on_the_emulated_device(tmp_path):
    """The check has teeth: the teacher's training loop with a model the accelerator
    never placed (its batches are placed) stops at the first op."""
    from nasframe_search_spaces.hybrid_unet.align import train_model
    from nasframe_search_spaces.hybrid_unet.network import HybridRestormer, preset

    space = _ens()

    class Forgetful(EmulatedDevice):
        def to(self, obj):
            return obj if isinstance(obj, torch.nn.Module) else super().to(obj)

    dev = Forgetful()
    model = HybridRestormer(preset("tiny"), {s: ["transformer"] * n for s, n in
                                             [("enc1", 1), ("enc2", 1), ("enc3", 1),
                                              ("latent", 1), ("dec3", 1), ("dec2", 1),
                                              ("dec1", 1), ("refine", 1)]})
    with dev, pytest.raises(RuntimeError, match="same device"):
        train_model(model, space.data, steps=1, batch_size=2, lr=1e-3, accel=dev)


@pytest.mark.slow
def test_sd_teacher_alignment_fidelity_and_sr_run_on_the_device(tmp_path, monkeypatch):
    """sd_unet: the latent-diffusion teacher's training (VAE, latent pool, U-Net), the
    distillation of a candidate's pairs and the fidelity objective, then the SR
    adaptation (SR model, N-step targets, one-step student, fidelity decoder, the
    pipelines' evaluation)."""
    from nasframe.capabilities import BlockAlignment, Teacher
    from nasframe_objectives.fidelity import Fidelity
    from nasframe_search_spaces.sd_unet import sr
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    train = {"steps": 2, "vae_steps": 2, "batch_size": 2, "vae_crop": 16, "latent_size": 8, "pool": 4}
    tiny_sr = {"hr_size": 64, "pool": 4, "steps": 2, "batch_size": 2, "sample_steps": 2,
               "distill_steps": 2, "distill_targets": 2, "eval_images": 1, "eval_size": 64,
               "fidelity_steps": 2, "fidelity_width": 8, "fidelity_blocks": 1,
               "fidelity_oracle": False, "latency_repeats": 1, "threads": 1}
    dev = EmulatedDevice()
    space = SDUNetSpace({"preset": "tiny", "latent_size": 8, "teacher": {"train": train},
                         "fidelity": {"samples": 2, "batch_size": 2}, "surrogate_steps": 2})
    ctx = plugin_context(tmp_path, accelerator=dev)
    gmacs = sr.gmacs                  # fvcore's torch.jit.trace (on the CPU) runs unchecked
    monkeypatch.setattr(sr, "gmacs", lambda *a: _unchecked(dev, gmacs, *a))
    with dev:
        space.prepare(ctx, frozenset({Teacher, BlockAlignment}))
        after_teacher = dev.ops_on_device
        refs = space.reference_architectures()
        arch = next(a for n, a in refs.items() if n != "sd15")
        value, prov = Fidelity({"distill": {"steps": 2, "batch_size": 2}})(Candidate(space, arch), ctx)
        after_fidelity = dev.ops_on_device
        report = sr.adapt(space, refs["sd15"], ctx, tiny_sr)
    assert after_teacher > 1000 and after_fidelity > after_teacher
    assert dev.ops_on_device > after_fidelity + 1000
    assert prov.device == "emulated:0" and torch.isfinite(torch.tensor(value))
    assert report["seconds"] > 0                           # adapt() ran to its report


@pytest.mark.slow
def test_quad_base_and_adapters_train_on_the_device(tmp_path):
    from nasframe_search_spaces.quad.space import QuadSpace

    dev = EmulatedDevice()
    space = QuadSpace(**QuadSpace.small_params)
    ctx = plugin_context(tmp_path, accelerator=dev)
    with dev:
        space.prepare(ctx, frozenset({TrainedWeights}))
    assert dev.ops_on_device > 1000 and dev.placed_modules >= 2
    assert _host_only(dev, space._bank["base"].values())
    assert _host_only(dev, [t for a in space._bank["adapters"].values() for t in a.values()])
