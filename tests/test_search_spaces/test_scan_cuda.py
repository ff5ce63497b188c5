"""The scan on CUDA: ``auto`` picks mamba-ssm's fused kernel when it imports (and says why
not when it does not); the kernel and the chunked scan are checked against the sequential
reference on a GPU (skipped without CUDA / mamba-ssm)."""
import pytest
import torch

from nasframe_search_spaces.hybrid_unet import scan as sc
from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
mamba = pytest.mark.skipif(sc.mamba_ssm_scan() is None,
                           reason="needs mamba-ssm (pip install 'nasframe[cuda]') on a CUDA GPU")


def test_auto_on_cuda_without_mamba_ssm_falls_back_to_chunked_and_says_why(monkeypatch):
    monkeypatch.setattr(sc, "mamba_ssm_scan", lambda: None)
    monkeypatch.setattr(sc, "_MAMBA_ERROR", ["ModuleNotFoundError: No module named 'mamba_ssm'"])
    backend, reason = sc.choose_backend(on_cuda=True, grad=True)
    assert backend == "chunked"
    assert "No module named 'mamba_ssm'" in reason and "nasframe[cuda]" in reason


def test_auto_on_cuda_with_mamba_ssm_uses_its_kernel(monkeypatch):
    monkeypatch.setattr(sc, "mamba_ssm_scan", lambda: (lambda *a: None))
    assert sc.choose_backend(on_cuda=True, grad=True)[0] == "mamba_ssm"
    assert sc.choose_backend(on_cuda=True, grad=False)[0] == "mamba_ssm"
    assert sc.choose_backend(on_cuda=False, grad=True)[0] == "chunked"   # the CPU never


def _inputs(device, L=300, b=2, h=4, p=8, g=2, n=16):
    torch.manual_seed(0)
    x = torch.randn(b, L, h, p, device=device)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, device=device) - 1)
    A = -torch.rand(h, device=device) - 0.5
    B, C = torch.randn(b, L, g, n, device=device), torch.randn(b, L, g, n, device=device)
    return x, dt, A, B, C, torch.randn(h, device=device)


@cuda
def test_chunked_scan_on_cuda_equals_the_reference():
    args = _inputs("cuda")
    ref = sc.scan_sequential(*(a.double() for a in args))
    assert torch.allclose(sc.scan_chunked(*args).double(), ref, atol=1e-3, rtol=1e-3)


@cuda
@mamba
def test_mamba_ssm_kernel_equals_the_reference_and_has_gradients():
    args = [a.requires_grad_(True) for a in _inputs("cuda")]
    ref = sc.scan_sequential(*(a.detach().double() for a in args))
    out = sc.selective_scan(*args, backend="auto")
    assert sc.resolve_backend("auto", args[0]) == "mamba_ssm"
    assert torch.allclose(out.double(), ref, atol=1e-3, rtol=1e-3)
    out.square().sum().backward()
    grads = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    sc.scan_chunked(*args).square().sum().backward()
    for got, want in zip(grads, (a.grad for a in args)):
        assert torch.allclose(got, want, atol=1e-2, rtol=1e-2)


@cuda
@mamba
def test_ssm_block_on_cuda_agrees_across_backends():
    torch.manual_seed(0)
    block = SSMBlock(32, d_state=8, headdim=16, orders=4).cuda().eval()
    x = torch.randn(2, 32, 16, 24, device="cuda")
    outs = {}
    with torch.no_grad():
        for backend in ("sequential", "chunked", "mamba_ssm"):
            block.ssm.backend = backend
            outs[backend] = block(x)
    for backend in ("chunked", "mamba_ssm"):
        assert torch.allclose(outs[backend], outs["sequential"], atol=1e-3, rtol=1e-3), backend
