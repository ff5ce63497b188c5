"""`device` and `precision`: checks, the Accelerator's moves, and the emulated device that
tests placement without a GPU."""
import pytest
import torch
import yaml
from torch import nn

from conftest import cli_here
from nasframe import accel
from nasframe.accel import Accelerator
from nasframe.config import ExperimentConfig
from nasframe.context import Context
from nasframe.errors import ConfigError
from nasframe.placement_check import EmulatedDevice

FAST = {
    "name": "dev",
    "search_space": {"name": "conv_denoiser", "params": {"depths": [1], "widths": [4],
                                                         "kernels": [3], "input_size": 16}},
    "objectives": [{"name": "params"}],
    "strategy": {"name": "grid"},
    "budget": {"trials": 1},
}


def test_cuda_on_a_machine_without_one_names_device_and_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    found = accel.problems("cuda", "bf16")
    assert len(found) == 1 and found[0].startswith("device: 'cuda'")
    assert "set device: cpu" in found[0]
    with pytest.raises(ConfigError, match="device: 'cuda:1'"):
        accel.check("cuda:1")
    assert accel.problems("cpu") == [] and accel.problems("cpu", "bf16") == []
    assert "fp16 autocast is for GPUs" in accel.problems("cpu", "fp16")[0]


def test_cuda_index_past_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert accel.problems("cuda:1", "bf16") == []
    assert "only 2 GPU(s) are visible" in accel.problems("cuda:2")[0]


def test_config_rejects_an_unknown_device_and_precision():
    with pytest.raises(Exception, match="not a device nasframe trains on"):
        ExperimentConfig.model_validate({**FAST, "device": "gpu0"})
    with pytest.raises(Exception, match="precision"):
        ExperimentConfig.model_validate({**FAST, "precision": "int8"})
    cfg = ExperimentConfig.model_validate(FAST)
    assert (cfg.device, cfg.precision) == ("cpu", "fp32")     # the default stays the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_validate_with_device_cuda_without_a_gpu_exits_2(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**FAST, "device": "cuda"}))
    res = cli_here("validate", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "device: 'cuda'" in res.stderr and "set device: cpu" in res.stderr
    path.write_text(yaml.safe_dump({**FAST, "precision": "bf16"}))
    ok = cli_here("validate", str(path))
    assert ok.returncode == 0 and "bf16 autocast" in ok.stdout


def test_context_hands_out_the_experiments_accelerator(tmp_path):
    ctx = Context(run_dir=tmp_path, precision="bf16")
    assert ctx.accel.device == torch.device("cpu") and ctx.accel.precision == "bf16"
    assert ctx.accel.describe() == "cpu, bf16 autocast"
    dev = EmulatedDevice()
    assert Context(run_dir=tmp_path, accelerator=dev).accel is dev


def test_bf16_autocast_trains_and_results_come_back_fp32():
    torch.manual_seed(0)
    a = Accelerator("cpu", "bf16")
    model = a.to(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    first = None
    for _ in range(30):
        with a.autocast():
            out = model(a.to(x))
        assert out.dtype == torch.bfloat16                   # the matmuls ran in bf16
        loss = (out.float() - x).pow(2).mean()
        first = first if first is not None else loss.item()
        a.step(loss, opt, a.grad_scaler(), clip=1.0)
    assert loss.item() < 0.5 * first
    assert all(p.dtype == torch.float32 for p in model.parameters())   # weights stay fp32
    assert a.host(out).dtype == torch.float32


def test_placed_puts_the_module_back():
    m = nn.Linear(2, 2)
    dev = EmulatedDevice()
    with dev, dev.placed(m) as inside:
        assert all(dev.on_device(p) for p in inside.parameters())
    assert not any(dev.on_device(p) for p in m.parameters())


# -- the emulated device itself ------------------------------------------------
def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 1))


def test_emulated_device_carries_placement_through_training():
    dev, m = EmulatedDevice(), _net()
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with dev:
        dev.to(m)
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        xb, yb = dev.to((x, y))
        loss = nn.functional.l1_loss(m(xb), yb)
        dev.step(loss, opt, dev.grad_scaler(), clip=1.0)
        assert dev.on_device(loss) and all(dev.on_device(p.grad) for p in m.parameters())
        assert all(dev.on_device(s["exp_avg"]) for s in opt.state.values())
        assert not dev.on_device(dev.host(m(xb))) and not dev.on_device(m(xb).cpu())
        m.cpu()
        assert not any(dev.on_device(p) for p in m.parameters())
    assert not dev.on_device(x)                       # the caller's tensors are untouched
    assert dev.ops_on_device > 50


@pytest.mark.parametrize("mistake", ["model", "batch", "target", "numpy"])
def test_emulated_device_fails_like_cuda_on_a_forgotten_placement(mistake):
    dev, m = EmulatedDevice(), _net()
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with dev:
        if mistake != "model":
            dev.to(m)
        xb = x if mistake == "batch" else dev.to(x)
        yb = y if mistake == "target" else dev.to(y)
        with pytest.raises((RuntimeError, TypeError), match="same device|to numpy"):
            out = m(xb)
            if mistake == "numpy":
                out.detach().numpy()
            nn.functional.l1_loss(out, yb)


def test_a_gpu_runs_context_falls_back_to_the_cpu_only_where_asked(tmp_path, capsys):
    """A run made with `device: cuda` and exported on a machine without a GPU: export's
    context works on the CPU and says so; a run's context still refuses (exit 2)."""
    import nasframe

    exp = nasframe.Experiment.from_dict({**FAST, "device": "cuda", "precision": "bf16"})
    with pytest.raises(ConfigError, match="device: 'cuda'"):
        exp.context(tmp_path)
    ctx = exp.context(tmp_path, cpu_fallback=True)
    assert ctx.accel.device == torch.device("cpu") and ctx.accel.precision == "fp32"
    assert "not available here; using the CPU" in capsys.readouterr().err
