"""QUAD on a latent diffusion U-Net: SR and deblur adapters on one shared quantised graph.

The base both tasks share is sd_unet's U-Net adapted for x4 super-resolution
(:mod:`nasframe_search_spaces.sd_unet.sr`: the LR latent concatenated to the
noisy latent, ``conv_in`` widened, DDPM training) and distilled to **one step**
(one call at ``t = 999``; ``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)``).
:class:`OneStepDenoiser` makes that one call a single-input module
(``[noise, condition latent] -> x0 latent``, the timestep and the null text
embedding constants), so every piece of :mod:`.lora` and :mod:`.quant` applies
unchanged: :class:`~.lora.LoRANet` wraps its Linear and Conv2d layers (the A/B
tensors are call arguments, graph inputs once exported), :class:`~.quant.QuantSim`
fake-quantises it (outputs of diffusers' ``ResnetBlock2D`` observed as block
outputs), :func:`~.quant.quad` trains the adapters against one fixed profile.

Tasks (sd_unet's pairs in latent space, :func:`nasframe_search_spaces.sd_unet.sr.latent_pairs`:
the condition latent is the VAE latent of the conditioning image, the target the clean
image's latent):

``sr``
    the bicubic x4 upsampling of the LR crop (what the base was trained on);
``deblur``
    the blurred crop (sd_unet's synthetic motion / Gaussian blur of the photos, other
    kernels on the held-out photos; ``deblur`` settings).

Per task a full-precision LoRA adapter is trained (L1 of the one-step latent to the
clean latent, the base frozen); its base + adapter merged is that task's fp32 model,
the distillation teacher of QUAD. Methods (as :mod:`.space`): ``fp32``, ``quad``
(one profile calibrated on every task, then QUAD), ``shared_ptq`` (that profile, fp32
adapters), ``separate`` (a profile per task) and ``naive`` (one profile calibrated on
the first task only). Quality: PSNR/SSIM of the decoded one-step image against the
clean held-out crop, and PSNR against the task's fp32 image (the quantisation's own
damage).

Everything trained is cached in ``ctx``'s cache (the teacher and SR stages by
sd_unet, the adapters here under ``quad/diffusion_adapters``).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nasframe.params import Field, Int, ParamError, Params
from nasframe_search_spaces.quad.space import METHODS, AdapterParams, QatParams

if TYPE_CHECKING:
    from nasframe.context import Context

TASKS = ("sr", "deblur")
VERSION = 1

#: the teacher (VAE + U-Net pretraining) of the default settings: minutes on 2 CPU cores
TEACHER = {"steps": 30, "vae_steps": 100, "batch_size": 8, "latent_size": 8, "pool": 64}
#: the SR model and its one-step student (the shared base)
SR = {"hr_size": 64, "pool": 64, "steps": 100, "batch_size": 8, "sample_steps": 4,
      "distill_steps": 40, "distill_targets": 24, "fidelity_steps": 0, "eval_images": 8,
      "eval_size": 64, "latency_repeats": 0}


class DiffusionQuadParams(Params):
    """Settings of QUAD on the SR-adapted diffusion U-Net."""

    tasks: list[Literal["sr", "deblur"]] = Field(list(TASKS), min_length=1)
    """The tasks, one adapter each; the first is the naive baseline's calibration task."""
    teacher: dict[str, Any] = dict(TEACHER)
    """sd_unet ``teacher.train`` settings (VAE and U-Net pretraining of the ``tiny`` preset;
    keys given replace those of :data:`TEACHER`)."""
    sr: dict[str, Any] = dict(SR)
    """:class:`~nasframe_search_spaces.sd_unet.sr.SRParams` of the shared base (SR model, one-step
    student; keys given replace those of :data:`SR`; ``pool``, ``hr_size``, ``eval_images`` and
    ``eval_size`` also set the tasks' crops)."""
    rank: Int = Field(4, ge=1, le=1024)
    """LoRA rank of every adapted layer."""
    bits: Literal["w8a8", "w8a16", "w4a16"] = "w8a16"
    """Weight/activation bit widths of every layer."""
    deblur: dict[str, Any] = {}
    """Deblur settings of :class:`~nasframe_search_spaces.sd_unet.sr.SRParams` (``kernel``,
    ``blur_sigma``, ``motion_length``, ``blurs_per_image``) for the deblur task's pairs."""
    adapters: AdapterParams = AdapterParams(steps=60, batch_size=8, lr=2e-3)
    """Each task's full-precision adapter: steps, batch_size, lr."""
    qat: QatParams = QatParams(steps=40, batch_size=8, lr=5e-4, calib_batches=2)
    """QUAD: steps (tasks round-robin), batch_size (also of each calibration batch), lr, kd,
    calib_batches (per task, for every profile)."""
    seed: Int = Field(0, ge=0)
    """Seed of the tasks' noise and the adapters' initialisation."""


class OneStepDenoiser(nn.Module):
    """The one-step SR student as a single-input module: ``forward(x)`` with ``x = [z, c]``
    ((B, 2C, h, w): noise and condition latent) returns the x0 latent of one call at
    ``t = 999`` (:func:`nasframe_search_spaces.sd_unet.sr.one_step`); the timestep and the null
    text embedding are constants of the graph."""

    def __init__(self, unet: nn.Module, ehs: torch.Tensor):
        super().__init__()
        from nasframe_search_spaces.sd_unet.pretrain import scheduler
        from nasframe_search_spaces.sd_unet.sr import T_MAX

        self.unet = unet
        self.channels = unet.cond_channels
        abar = scheduler().alphas_cumprod[T_MAX].float()
        self.register_buffer("ehs", ehs.detach().clone())
        self.register_buffer("timestep", torch.tensor([T_MAX]))
        self.sqrt_abar, self.sqrt_1m_abar = float(abar.sqrt()), float((1 - abar).sqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, c = x[:, :self.channels], x[:, self.channels:]
        eps = self.unet(z, c, self.timestep.expand(x.shape[0]), self.ehs.expand(x.shape[0], -1, -1))
        return (z - self.sqrt_1m_abar * eps) / self.sqrt_abar


class DiffusionQuad:
    """QUAD on the one-step SR U-Net (``tiny`` sd_unet preset) with one adapter per task.

    :meth:`prepare` trains (or loads) the teacher, the SR model, the one-step student and
    every task's fp32 adapter; :meth:`quality` scores a method, :meth:`memory` the bytes of
    N tasks, :meth:`export_check` the adapter graph in ONNX Runtime."""

    def __init__(self, ctx: Context, params: DiffusionQuadParams | dict | None = None,
                 progress: bool = False):
        self.ctx = ctx
        self.p = params if isinstance(params, DiffusionQuadParams) else DiffusionQuadParams(**(params or {}))
        if len(set(self.p.tasks)) != len(self.p.tasks):
            raise ParamError("tasks", f"{self.p.tasks} names a task twice; list each once")
        if "task" in self.p.sr:
            raise ParamError("sr.task", f"{self.p.sr['task']!r}: the tasks are set by `tasks`; "
                             "remove sr.task")
        self.tasks = tuple(self.p.tasks)
        self.progress = progress
        self.net = None
        self._cache: dict[str, Any] = {}

    # -- preparation -----------------------------------------------------------------
    def _bar(self):
        import contextlib

        return self.ctx.progress() if self.progress else contextlib.nullcontext()

    def prepare(self) -> dict[str, float]:
        """Teacher, SR model, one-step student (sd_unet's caches), the tasks' latents and the
        fp32 adapters (cached); seconds per stage."""
        from nasframe.capabilities import Teacher
        from nasframe_search_spaces.quad.lora import LoRANet
        from nasframe_search_spaces.sd_unet.space import SDUNetSpace
        from nasframe_search_spaces.sd_unet.sr import SRAdapter, SRParams

        if self.net is not None:
            return self.seconds
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        space = SDUNetSpace({"preset": "tiny", "latent_size": 8,
                             "teacher": {"train": {**TEACHER, **self.p.teacher}},
                             "fidelity": {"samples": 2, "batch_size": 2}})
        space.prepare(self.ctx, frozenset({Teacher}))
        self.space = space
        seconds["teacher"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.sr = SRAdapter(space, space.reference_architectures()["sd15"], self.ctx,
                            SRParams(**self.task_settings("sr")))
        student = self.sr.student()[0]
        seconds["sr_base"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._make_data()
        seconds["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = OneStepDenoiser(copy.deepcopy(student), self.sr.tr["ehs"]).eval()
        self.net = LoRANet(base, rank=self.p.rank)
        self.adapters = self._train_adapters()
        self.teachers = {t: self.net.merged(self.adapters[t]) for t in self.tasks}
        seconds["adapters"] = time.perf_counter() - t0
        self.seconds = seconds
        return seconds

    def task_settings(self, task: str) -> dict[str, Any]:
        """The SR settings of ``task``'s pairs (crops, sizes and seed as the base's)."""
        return {**SR, **self.p.sr, "task": task, **(self.p.deblur if task == "deblur" else {})}

    def _make_data(self) -> None:
        """Per task the training pool (condition latent, clean latent) and the held-out set
        (``[noise, condition latent]``, clean image, conditioning image): sd_unet's
        :func:`~nasframe_search_spaces.sd_unet.sr.latent_pairs`."""
        from nasframe_search_spaces.sd_unet.sr import latent_pairs

        self.pool, self.eval = {}, {}
        for t in self.tasks:
            train = latent_pairs(self.space, self.ctx, self.task_settings(t), split="train")
            val = latent_pairs(self.space, self.ctx, self.task_settings(t), split="val")
            g = torch.Generator().manual_seed(98_000_023 + self.p.seed)   # the same noise per task
            noise = torch.randn(val["cond"].shape, generator=g)
            self.pool[t] = (train["cond"], train["target"])
            self.eval[t] = {"x": torch.cat([noise, val["cond"]], 1), "hr": val["images"],
                            "degraded": val["condition"]}

    def batch(self, task: str, step: int, batch_size: int, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch ``step`` of ``task``: ``([noise, condition latent], clean latent)``."""
        cond, target = self.pool[task]
        g = torch.Generator().manual_seed(99_000_000 + 1_000_003 * salt + 10_007 * self.tasks.index(task)
                                          + 7 * self.p.seed * 1_000_033 + step)
        idx = torch.randint(0, cond.shape[0], (batch_size,), generator=g)
        z = torch.randn(cond[idx].shape, generator=g)
        return torch.cat([z, cond[idx]], 1), target[idx]

    def _train_adapters(self) -> dict[str, list[torch.Tensor]]:
        from nasframe.distill import module_digest
        from nasframe_search_spaces.quad.quant import train_adapters

        a = self.p.adapters
        payload = {"version": VERSION, "base": module_digest(self.net.net), "tasks": list(self.tasks),
                   "rank": self.p.rank, **a.model_dump(),
                   "data": {t: module_digest({"c": c, "y": y}) for t, (c, y) in self.pool.items()},
                   "seed": self.p.seed}

        def make(path: Path) -> None:
            net = self.net.train()
            out = {}
            with self._bar() as bar:
                for i, t in enumerate(self.tasks):
                    ad = net.init_adapter(seed=self.p.seed + 100 + i, requires_grad=True)

                    def loss(step, ad=ad, t=t):
                        x, y = self.batch(t, step, a.batch_size, salt=1)
                        return F.l1_loss(net(x, *ad), y)
                    train_adapters(ad, loss, a.steps, a.lr, bar, f"adapter {t}")
                    out[t] = net.adapter_state(ad)
            net.eval()
            torch.save(out, path)

        path = self.ctx.cache.get_or_create("quad/diffusion_adapters", payload, make, suffix=".pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {t: self.net.adapter_from_state(state[t]) for t in self.tasks}

    # -- profiles and quality ------------------------------------------------------------
    @property
    def sim(self):
        if "sim" not in self._cache:
            from diffusers.models.resnet import ResnetBlock2D

            from nasframe_search_spaces.quad.quant import BIT_WIDTHS, QuantSim

            bits = BIT_WIDTHS[self.p.bits]
            self._cache["sim"] = QuantSim(self.net, bits=lambda name: bits,
                                          observe_types=(ResnetBlock2D,))
        return self._cache["sim"]

    def _calib(self, tasks) -> list:
        q = self.p.qat
        return [(self.batch(t, k, q.batch_size, salt=2)[0], self.adapters[t])
                for t in tasks for k in range(q.calib_batches)]

    def profiles(self) -> dict[str, Any]:
        """``shared`` (calibrated on every task), QUAD's ``adapters`` trained against it,
        ``separate`` (per task) and ``naive`` (first task only)."""
        if "profiles" not in self._cache:
            from nasframe_search_spaces.quad.quant import quad

            self.prepare()
            sim, q = self.sim, self.p.qat
            t0 = time.perf_counter()
            shared = sim.calibrate(self._calib(self.tasks))
            with self._bar() as bar:
                trained = quad(sim, shared, self.adapters,
                               lambda t, k: self.batch(t, k, q.batch_size, salt=3),
                               self.teachers, steps=q.steps, lr=q.lr, kd=q.kd, progress=bar)
            quad_s = time.perf_counter() - t0
            self._cache["profiles"] = {
                "shared": shared, "adapters": trained, "quad_s": quad_s,
                "separate": {t: sim.calibrate(self._calib([t])) for t in self.tasks},
                "naive": sim.calibrate(self._calib(self.tasks[:1]))}
        return self._cache["profiles"]

    @torch.no_grad()
    def _images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.sr.decode(latents)

    def outputs(self, method: str) -> dict[str, torch.Tensor]:
        """The decoded one-step image of every task's held-out crops under ``method``."""
        if method not in (*METHODS, "base"):
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join((*METHODS, 'base'))}")
        key = f"out_{method}"
        if key in self._cache:
            return self._cache[key]
        self.prepare()
        sim = self.sim
        prof = None if method in ("fp32", "base") else self.profiles()
        out = {}
        for t in self.tasks:
            if method in ("fp32", "base"):
                sim.set_mode("float")
            else:
                sim.set_mode("quant", prof["separate"][t] if method == "separate" else
                             prof["naive"] if method == "naive" else prof["shared"])
            # "base": the shared one-step SR model without an adapter
            adapter = (() if method == "base" else
                       prof["adapters"][t] if method == "quad" else self.adapters[t])
            try:
                with torch.no_grad():
                    out[t] = self._images(sim(self.eval[t]["x"], *adapter))
            finally:
                sim.set_mode("float")
        self._cache[key] = out
        return out

    def quality(self, method: str) -> dict[str, dict[str, float]]:
        """Per task: ``psnr``/``ssim`` (dB; scikit-image) of the one-step image against the clean
        crop, mean over the held-out crops, and ``psnr_vs_fp32`` (against the task's fp32 image)."""
        from nasframe_search_spaces.sd_unet.sr import image_metrics

        got, ref = self.outputs(method), self.outputs("fp32")
        return {t: {**image_metrics(got[t], self.eval[t]["hr"]),
                    "psnr_vs_fp32": image_metrics(got[t], ref[t])["psnr"] if method != "fp32"
                    else float("inf")}
                for t in self.tasks}

    def reference_quality(self) -> dict[str, dict[str, dict[str, float]]]:
        """PSNR/SSIM of each task's ``degraded`` conditioning image (bicubic upsampling,
        blurred image) and the VAE's reconstruction of the clean crop (``vae_ceiling``: no
        latent model decoded by this VAE does better)."""
        from nasframe_search_spaces.sd_unet.sr import image_metrics

        self.prepare()
        out: dict[str, dict[str, dict[str, float]]] = {"degraded": {}, "vae_ceiling": {}}
        for t in self.tasks:
            hr = self.eval[t]["hr"]
            out["degraded"][t] = image_metrics(self.eval[t]["degraded"], hr)
            out["vae_ceiling"][t] = image_metrics(self._images(self.sr.encode(hr)), hr)
        return out

    # -- memory and the graph ------------------------------------------------------------
    def memory(self, n_tasks: int, folder: str | Path) -> dict[str, float]:
        """Bytes of ``n_tasks`` tasks on a device, per method: base weights (at the bit
        widths; fp32 for ``fp32``) + adapters (int8, a scale per tensor) + the AIMET
        encodings files (the saved profiles' sizes). ``separate`` = one merged quantised
        model and one encodings file per task; ``quad`` / ``naive`` = one graph, one
        encodings file and N adapters; ``fp32_separate`` / ``fp32_shared`` = N merged fp32
        models / one fp32 graph + N fp32 adapters."""
        from nasframe_search_spaces.quad.deploy import deploy_bytes

        prof = self.profiles()
        folder = Path(folder)
        weights = {layer.name: layer.base.weight for layer in self.net.layers}
        enc_bytes = {}
        for name, profile in (("shared", prof["shared"]), ("separate", prof["separate"][self.tasks[0]])):
            path = profile.save(folder / f"{name}.encodings", weights)
            enc_bytes[name] = path.stat().st_size
        b = deploy_bytes(self.net, self.sim.weight_bits, n_tasks)
        fp32 = 4 * sum(p.numel() for p in self.net.net.parameters())
        fp32_adapter = 4 * self.net.adapter_numel()
        return {"tasks": n_tasks, "base_bytes": b["base_bytes"], "adapter_bytes": b["adapter_bytes"],
                "encodings_bytes": enc_bytes["shared"],
                "fp32_separate": n_tasks * fp32, "fp32_shared": fp32 + n_tasks * fp32_adapter,
                "quad": b["shared_bytes"] + enc_bytes["shared"],
                "naive": b["shared_bytes"] + enc_bytes["shared"],
                "separate": b["separate_bytes"] + n_tasks * enc_bytes["separate"]}

    def export_check(self, path: str | Path, task: str | None = None) -> dict[str, Any]:
        """The float adapter graph (A/B as inputs, :func:`.deploy.export_adapter_graph`) fed
        ``task``'s adapter (default: the first) in ONNX Runtime vs the merged PyTorch model on a
        held-out input."""
        from nasframe_search_spaces.quad.deploy import export_adapter_graph

        self.prepare()
        task = task or self.tasks[0]
        x = self.eval[task]["x"][:1]
        return export_adapter_graph(self.net, x, {task: self.adapters[task]}, path)


def run(ctx: Context, params: DiffusionQuadParams | dict | None = None, *, tasks_for_memory=(2, 10),
        export: bool = True, progress: bool = False) -> dict[str, Any]:
    """Everything :mod:`benchmarks.quad_diffusion_report` prints: per-task quality of every
    method (plus the base without adapter and the degraded input), memory for N tasks, the
    ONNX check; seconds per stage."""
    dq = DiffusionQuad(ctx, params, progress=progress)
    out: dict[str, Any] = {"settings": dq.p.model_dump(), "seconds": dict(dq.prepare())}
    t0 = time.perf_counter()
    out["quality"] = {m: dq.quality(m) for m in (*METHODS, "base")}
    out["quality"].update(dq.reference_quality())
    out["seconds"]["quality"] = time.perf_counter() - t0 - dq.profiles()["quad_s"]
    out["seconds"]["quad"] = dq.profiles()["quad_s"]
    folder = ctx.run_dir / "quad_diffusion"
    out["memory"] = {n: dq.memory(n, folder) for n in tasks_for_memory}
    out["profile_distance"] = {f"separate_{t}_vs_shared": dq.profiles()["separate"][t].range_ratio(
        dq.profiles()["shared"]) for t in dq.tasks}
    out["adapted_layers"] = len(dq.net.slots)
    out["adapter_params"] = dq.net.adapter_numel()
    out["base_params"] = sum(p.numel() for p in dq.net.net.parameters())
    if export:
        t0 = time.perf_counter()
        r = dq.export_check(folder / "graph.onnx")
        out["export_check"] = {"task": dq.tasks[0], **r["per_task"][dq.tasks[0]],
                               "lora_inputs": r["lora_inputs"], "lora_initializers": r["lora_initializers"]}
        out["seconds"]["export"] = time.perf_counter() - t0
    (folder / "report.json").write_text(json.dumps(out, indent=1, default=str))
    return out
