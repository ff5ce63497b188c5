"""``quad``: per-block LoRA rank and bit widths of one shared, quantised multi-task model.

The base is hybrid_unet's all-transformer U-Net (preset ``small`` or ``tiny``),
trained once on a mix of the tasks; every task (denoise, deblur, derain) gets a
LoRA adapter whose A/B tensors are *inputs* of the one exported graph. Per
block (or stage) the search picks

``rank_<block>``
    the LoRA rank of the block's Linear/1x1/3x3 layers (``ranks``, default 0, 4,
    8, 16; 0 = no adapter there; the layers outside the blocks use ``outside_rank``);
``bits_<block>``
    its weight/activation bit widths (``bits``: ``w8a8``, ``w8a16``, ``w4a16``;
    outside the blocks w8a8).

:meth:`QuadSpace.prepare` (cached in the run's cache) trains the base and, per
task, a full-precision adapter at the largest rank (L1 to the clean target);
that task's base + adapter is its full-precision model (the distillation
teacher). A candidate takes, per layer, the best rank-r approximation (SVD) of
the full adapter; :meth:`task_quality` then quantises it:

``quad``
    ONE profile calibrated on every task's adapter, then QUAD: quantisation-aware
    training of all adapters against that fixed profile with distillation from each
    task's full-precision model (``qat``);
``shared_ptq``
    the same shared profile without the training;
``separate``
    a profile per task (the one-binary-per-task practice);
``naive``
    one shared profile calibrated on the first task only;
``fp32``
    no quantisation.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from nasframe.architecture import Architecture
from nasframe.capabilities import MultiTask, QuantisedGraph, TrainedWeights, ValidationPairs
from nasframe.params import Field, Float, Int, ParamError, Params
from nasframe.space import Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.context import Context

TASKS = ("denoise", "deblur", "derain")
BITS = ("w8a8", "w8a16", "w4a16")
METHODS = ("quad", "shared_ptq", "separate", "naive", "fp32")
QUAD_VERSION = 1


class BaseParams(Params):
    steps: Int = Field(300, ge=1, le=10_000_000)
    """Training steps of the shared base (a mix of every task's crops)."""
    batch_size: Int = Field(6, ge=1, le=4096)
    """Crops per step (split between the tasks)."""
    lr: Float = Field(2e-3, gt=0, le=10)
    """AdamW learning rate (cosine decay)."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the training (default: the experiment's seed)."""


class AdapterParams(Params):
    steps: Int = Field(100, ge=1, le=10_000_000)
    """Training steps of each task's full-precision adapter (at the largest rank)."""
    batch_size: Int = Field(6, ge=1, le=4096)
    """Crops per step."""
    lr: Float = Field(2e-3, gt=0, le=10)
    """AdamW learning rate (cosine decay)."""


class QatParams(Params):
    steps: Int = Field(30, ge=0, le=10_000_000)
    """QUAD steps per candidate (all tasks round-robin); 0 = the shared profile alone."""
    batch_size: Int = Field(4, ge=1, le=4096)
    """Crops per step (and per calibration batch)."""
    lr: Float = Field(5e-4, gt=0, le=10)
    """AdamW learning rate of the adapters."""
    kd: Float = Field(1.0, ge=0, le=1000)
    """Weight of the distillation loss (L1 to the task's full-precision model)."""
    calib_batches: Int = Field(2, ge=1, le=10_000)
    """Calibration batches per task for every profile."""


class QuadSpace(SearchSpace, ValidationPairs, TrainedWeights, MultiTask, QuantisedGraph):
    """LoRA rank and bit widths per block of one shared multi-task U-Net (QUAD)."""

    name = "quad"
    dependencies = ("skimage",)
    install_hint = "pip install 'nasframe[restoration]'"
    small_params = {"preset": "tiny", "granularity": "stage", "input_size": 16,
                    "ranks": [0, 2], "data": {"short_side": 48, "val_size": 16, "patch": 16},
                    "base": {"steps": 2, "batch_size": 3}, "adapters": {"steps": 2, "batch_size": 2},
                    "qat": {"steps": 2, "batch_size": 2, "calib_batches": 1}}

    class Params(Params):
        preset: Literal["restormer", "small", "tiny"] = "small"
        """hybrid_unet preset of the base: small (CPU examples), tiny (tests) or restormer."""
        granularity: Literal["block", "stage"] = "block"
        """One rank/bits decision pair per block, or per stage."""
        tasks: list[Literal["denoise", "deblur", "derain"]] = Field(list(TASKS), min_length=1)
        """The tasks; one adapter each (the first is the naive baseline's calibration task)."""
        data: dict[str, Any] = {}
        """RestorationData params shared by the tasks (patch, val_size, short_side, seed, ...)."""
        ranks: list[Int] = Field([0, 4, 8, 16], min_length=1)
        """LoRA ranks a block may take (0: no adapter in that block)."""
        bits: list[Literal["w8a8", "w8a16", "w4a16"]] = Field(list(BITS), min_length=1)
        """Weight/activation bit widths a block may take."""
        outside_rank: Int = Field(4, ge=0, le=1024)
        """LoRA rank of the layers outside the blocks (embedding, samplers, output)."""
        base: BaseParams = BaseParams()
        """The shared base's training: steps, batch_size, lr, seed."""
        adapters: AdapterParams = AdapterParams()
        """Each task's full-precision adapter: steps, batch_size, lr."""
        qat: QatParams = QatParams()
        """Per candidate: QUAD steps, batch_size, lr, kd, calib_batches."""
        input_size: Int = Field(64, ge=8, le=8192)
        """Side of the default example input (export, latency)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        from nasframe_search_spaces.hybrid_unet import network as net
        from nasframe_search_spaces.hybrid_unet.data import RestorationData

        p = self.params
        if len(set(p.tasks)) != len(p.tasks):
            raise ParamError("tasks", f"{p.tasks} names a task twice; list each once")
        if any(r < 0 or r > 1024 for r in p.ranks) or len(set(p.ranks)) != len(p.ranks):
            raise ParamError("ranks", f"{p.ranks}: give distinct ranks in 0..1024")
        if len(set(p.bits)) != len(p.bits):
            raise ParamError("bits", f"{p.bits} names a bit width twice")
        if "task" in p.data:
            raise ParamError("data.task", "the tasks are set by `tasks`; remove data.task")
        self.config = net.preset(p.preset)
        self.task_names = tuple(p.tasks)
        self.granularity = p.granularity
        self.input_shape = (self.config.in_channels, p.input_size, p.input_size)
        cfg = self.config
        if p.granularity == "block":
            self._units = {f"{s}_{i}": net.HybridRestormer.block_name(s, i) for s, i in cfg.slots()}
        else:
            self._units = {s: net.STAGE_MODULES[s] for s in net.STAGES if cfg.stage_blocks(s) > 0}
        self._decisions: tuple[Decision, ...] = tuple(
            d for u in self._units for d in (Categorical(f"rank_{u}", tuple(p.ranks)),
                                             Categorical(f"bits_{u}", tuple(p.bits))))
        self.data_params = dict(p.data)
        try:
            self._data = {t: RestorationData.from_params(self.data_params, task_default=t)
                          for t in self.task_names}
        except ValueError as err:
            raise ParamError("data", str(err)) from None
        self._seed = 0
        self._bank: dict[str, Any] | None = None
        self._teachers: dict[str, torch.nn.Module] = {}

    def __repr__(self) -> str:
        return (f"QuadSpace(preset={self.params.preset!r}, tasks={list(self.task_names)}, "
                f"units={len(self._units)})")

    # -- decisions ----------------------------------------------------------
    def decisions(self) -> Sequence[Decision]:
        return self._decisions

    def reference_architectures(self) -> dict[str, Architecture]:
        """``largest`` (every block at the largest rank, the widest bits offered) and
        ``smallest`` (lowest rank, narrowest bits)."""
        p = self.params
        wide = max(p.bits, key=lambda b: (int(b[1]), int(b.split("a")[1])))
        narrow = min(p.bits, key=lambda b: (int(b[1]), int(b.split("a")[1])))
        return {"largest": self._uniform(max(p.ranks), wide),
                "smallest": self._uniform(min(p.ranks), narrow)}

    def _uniform(self, rank: int, bits: str) -> Architecture:
        return Architecture({k: v for u in self._units
                             for k, v in ((f"rank_{u}", rank), (f"bits_{u}", bits))})

    def _unit_of(self, layer: str) -> str | None:
        for unit, prefix in self._units.items():
            if layer == prefix or layer.startswith(prefix + "."):
                return unit
        return None

    def rank_of(self, arch: Architecture, layer: str) -> int:
        unit = self._unit_of(layer)
        return self.params.outside_rank if unit is None else int(arch[f"rank_{unit}"])

    def bits_of(self, arch: Architecture, layer: str) -> tuple[int, int]:
        from nasframe_search_spaces.quad.quant import BIT_WIDTHS

        unit = self._unit_of(layer)
        return BIT_WIDTHS["w8a8" if unit is None else arch[f"bits_{unit}"]]

    # -- models -------------------------------------------------------------
    def _base(self):
        from nasframe_search_spaces.hybrid_unet.align import all_kinds
        from nasframe_search_spaces.hybrid_unet.network import HybridRestormer

        return HybridRestormer(self.config, all_kinds(self.config, "transformer"))

    def build(self, arch: Architecture) -> torch.nn.Module:
        """A :class:`~.lora.LoRANet` over the (trained, once prepared) base with this
        architecture's ranks; ``model.task_adapters`` holds each task's adapter (zero
        updates before ``prepare``). ``model(x)`` is the base; ``model(x, *adapter)`` a task."""
        from nasframe_search_spaces.quad.lora import LoRANet

        base = self._base()
        if self._bank is not None:
            base.load_state_dict(self._bank["base"])
        net = LoRANet(base, rank=lambda name: self.rank_of(arch, name))
        if self._bank is not None:
            net.task_adapters = {t: net.fit_adapter(self._bank["adapters"][t])
                                 for t in self.task_names}
        else:
            net.task_adapters = {t: net.init_adapter(seed=i) for i, t in enumerate(self.task_names)}
        return net

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """A chain of the units (embedding, blocks or stages, output), each with its
        ``rank`` and ``bits``."""
        import networkx as nx

        from nasframe_search_spaces.hybrid_unet.network import STAGES

        side = self.input_shape[-1]
        g = nx.DiGraph()
        g.add_node("embed", kind="conv", channels=self.config.dim, resolution=side,
                   rank=self.params.outside_rank, bits="w8a8")
        prev = "embed"
        for unit in self._units:
            stage = unit.rsplit("_", 1)[0] if self.granularity == "block" else unit
            mult, div, _, _ = STAGES[stage]
            g.add_node(unit, kind="transformer", channels=self.config.dim * mult,
                       resolution=side // div, rank=int(arch[f"rank_{unit}"]),
                       bits=arch[f"bits_{unit}"])
            g.add_edge(prev, unit)
            prev = unit
        g.add_node("output", kind="conv", channels=self.config.out_channels, resolution=side,
                   rank=self.params.outside_rank, bits="w8a8")
        g.add_edge(prev, "output")
        return g

    # -- data ---------------------------------------------------------------
    def tasks(self) -> tuple[str, ...]:
        return self.task_names

    def task_data(self, task: str):
        return self._data[task]

    def validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first task's validation pairs (every task's: :meth:`task_data`)."""
        return self._data[self.task_names[0]].validation()

    def _use_seed(self, seed: int) -> None:
        if seed == self._seed or "seed" in self.data_params:
            return
        from nasframe_search_spaces.hybrid_unet.data import RestorationData

        self._seed = seed
        self._data = {t: RestorationData.from_params(self.data_params, task_default=t, seed=seed)
                      for t in self.task_names}

    # -- preparation --------------------------------------------------------
    @property
    def prepared(self) -> bool:
        return self._bank is not None

    def prepare(self, ctx: Context, needs=frozenset()) -> None:
        """With :class:`~nasframe.capabilities.TrainedWeights` in ``needs``: the base and
        every task's full-precision adapter at the largest rank (both cached)."""
        self._use_seed(ctx.seed)
        if TrainedWeights not in needs or self._bank is not None:
            return
        import torch

        from nasframe.distill import module_digest
        from nasframe_search_spaces.hybrid_unet.align import train_model

        p = self.params
        seed = ctx.seed_for(p.base.seed)
        descr = {t: d.describe() for t, d in self._data.items()}
        payload = {"version": QUAD_VERSION, "config": self.config.to_dict(), "data": descr,
                   **p.base.model_dump(), "seed": seed}
        mix = _Mix([self._data[t] for t in self.task_names])

        def make_base(path):
            torch.manual_seed(seed)
            model = self._base()
            with ctx.progress() as progress:
                train_model(model, mix, steps=p.base.steps, batch_size=p.base.batch_size,
                            lr=p.base.lr, progress=progress, description="shared base",
                            accel=ctx.accel)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)

        base_path = ctx.cache.get_or_create("quad/base", payload, make_base, suffix=".pt")
        base_state = torch.load(base_path, map_location="cpu", weights_only=True)
        full = self._uniform(max(p.ranks), p.bits[0])
        base = self._base()
        base.load_state_dict(base_state)
        payload = {"version": QUAD_VERSION, "base": module_digest(base), "data": descr,
                   "rank": max(p.ranks), "outside_rank": p.outside_rank,
                   "units": self._units, **p.adapters.model_dump(), "seed": seed}

        def make_adapters(path):
            from nasframe_search_spaces.quad.lora import LoRANet
            from nasframe_search_spaces.quad.quant import train_adapters

            accel = ctx.accel           # trained on the experiment's device
            net = accel.to(LoRANet(copy.deepcopy(base), rank=lambda n: self.rank_of(full, n))).train()
            out = {}
            with ctx.progress() as progress:
                for i, t in enumerate(self.task_names):
                    ad = [a.detach().to(accel.device).requires_grad_(True)
                          for a in net.init_adapter(seed=seed + 100 + i)]

                    def loss(step, ad=ad, t=t):
                        x, y = accel.to(self._data[t].train_batch(p.adapters.batch_size, 20_000 + step))
                        with accel.autocast():
                            return torch.nn.functional.l1_loss(net(x, *ad).float(), y)
                    train_adapters(ad, loss, p.adapters.steps, p.adapters.lr, progress,
                                   f"adapter {t}", accel=accel)
                    out[t] = {k: v.cpu() for k, v in net.adapter_state(ad).items()}
            torch.save(out, path)

        start = time.time()
        ad_path = ctx.cache.get_or_create("quad/adapters", payload, make_adapters, suffix=".pt")
        adapters = torch.load(ad_path, map_location="cpu", weights_only=True)
        self._bank = {"base": base_state, "adapters": adapters}
        # each task's full-precision model: the base with its full adapter merged (the teacher)
        from nasframe_search_spaces.quad.lora import LoRANet

        ref = LoRANet(copy.deepcopy(base), rank=lambda n: self.rank_of(full, n))
        self._teachers = {t: ref.merged(ref.adapter_from_state(adapters[t]))
                          for t in self.task_names}
        ctx.log(f"[quad] base and {len(adapters)} adapters ready ({time.time() - start:.0f} s; "
                f"cache {ad_path.parent})")

    # -- multi-task quality ---------------------------------------------------
    def quality_methods(self) -> tuple[str, ...]:
        return METHODS

    def _sim(self, arch: Architecture, model):
        sim = getattr(model, "_quad_sim", None)
        if sim is None:
            from nasframe_search_spaces.hybrid_unet.blocks import LayerNorm2d, TransformerBlock
            from nasframe_search_spaces.quad.quant import QuantSim

            sim = QuantSim(model, bits=lambda name: self.bits_of(arch, name),
                           observe_types=(LayerNorm2d, TransformerBlock))
            model._quad_sim = sim
        return sim

    def _calib(self, model, tasks: Sequence[str], adapters) -> list:
        q = self.params.qat
        return [(self._data[t].train_batch(q.batch_size, 30_000 + k)[0], adapters[t])
                for t in tasks for k in range(q.calib_batches)]

    def profiles(self, arch: Architecture, model, ctx: Context | None = None,
                 baselines: bool = False) -> dict[str, Any]:
        """The quantisation of ``model``'s tasks: the ``shared`` profile (calibrated on every
        task) and the QUAD ``adapters`` trained against it; with ``baselines`` also the
        per-task ``separate`` profiles and the ``naive`` one (first task only). Cached on
        the model."""
        import contextlib

        from nasframe_search_spaces.quad.quant import quad

        if self._bank is None:
            raise RuntimeError("quad: call prepare(ctx, {TrainedWeights}) before scoring tasks")
        out = model.__dict__.setdefault("_quad_profiles", {})
        sim = self._sim(arch, model)
        ads = model.task_adapters
        q = self.params.qat
        if "shared" not in out:
            shared = sim.calibrate(self._calib(model, self.task_names, ads))
            progress = ctx.progress() if ctx is not None else contextlib.nullcontext()
            with progress as bar:
                out["adapters"] = quad(
                    sim, shared, ads, lambda t, k: self._data[t].train_batch(q.batch_size, 40_000 + k),
                    self._teachers, steps=q.steps, lr=q.lr, kd=q.kd, progress=bar)
            out["shared"] = shared
        if baselines and "naive" not in out:
            out["separate"] = {t: sim.calibrate(self._calib(model, [t], ads)) for t in self.task_names}
            out["naive"] = sim.calibrate(self._calib(model, self.task_names[:1], ads))
        return out

    def task_quality(self, arch: Architecture, model, ctx: Context, method: str) -> dict[str, float]:
        """Mean PSNR (dB) of every task's validation images, quantised with ``method``."""
        import torch

        from nasframe_search_spaces.hybrid_unet.data import psnr

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        cache = model.__dict__.setdefault("_quad_quality", {})
        if method in cache:
            return cache[method]
        sim = self._sim(arch, model)
        prof = None if method == "fp32" else self.profiles(
            arch, model, ctx, baselines=method in ("separate", "naive"))
        out = {}
        for t in self.task_names:
            adapter = prof["adapters"][t] if method == "quad" else model.task_adapters[t]
            if method == "fp32":
                sim.set_mode("float")
            else:
                profile = (prof["separate"][t] if method == "separate" else
                           prof["naive"] if method == "naive" else prof["shared"])
                sim.set_mode("quant", profile)
            vals = []
            with torch.no_grad():
                for x, y in self._data[t].validation():
                    vals.append(min(psnr(sim(x, *adapter).clamp(0, 1), y), 100.0))
            sim.set_mode("float")
            out[t] = float(sum(vals) / len(vals))
        cache[method] = out
        return out

    def deploy_bytes(self, arch: Architecture, model, tasks: int) -> dict[str, float]:
        from nasframe_search_spaces.quad.deploy import deploy_bytes

        bits = {n.removesuffix(".base"): self.bits_of(arch, n.removesuffix(".base"))[0]
                for n, m in model.net.named_modules()
                if type(m).__name__ in ("Conv2d", "Linear")}
        return deploy_bytes(model, bits, tasks)

    # -- the deployable quantised graph ---------------------------------------
    def quantised_inputs(self, arch: Architecture, model, input_shape=None,
                         batch_size: int = 1) -> tuple:
        """An image and the first task's adapter: the graph takes every adapter tensor
        as an input (a task switch feeds another adapter, same graph)."""
        import torch

        shape = tuple(input_shape) if input_shape is not None else (batch_size, *self.input_shape)
        first = model.task_adapters[self.task_names[0]]
        return (torch.rand(shape), *first)

    def export_quantised(self, arch: Architecture, model, inputs, path):
        """The QDQ graph QUAD deploys: the float graph with the adapters as inputs (checked
        per task against the merged PyTorch model) carrying the shared profile of the torch
        simulation, calibrated on every task's adapter, each block at its architecture's
        bit widths (int4/int8 weights, uint8/uint16 activations) -- the profile QUAD trains
        against, mapped onto the graph's tensors (:func:`.deploy.ship_profile`). Nothing is
        trained: a cost-only experiment prepares nothing. The recorded error is the float
        graph's; the QDQ graph's deviation from the float model (quantisation, not export)
        is in ``note``."""
        import dataclasses
        import json
        from pathlib import Path

        import numpy as np
        import torch

        from nasframe.deploy import ExportResult, _hash_file, qdq_session
        from nasframe_search_spaces.quad.bundle import calibration_input
        from nasframe_search_spaces.quad.deploy import export_adapter_graph, ship_profile

        path = Path(path)
        x = inputs[0]
        float_path = path.with_name(path.stem + "-float.onnx")
        report = export_adapter_graph(model, x, model.task_adapters, float_path)
        size = x.shape[-1]
        sim = self._sim(arch, model)
        start = time.perf_counter()
        shared = sim.calibrate([(calibration_input(self.task_data(t), size, 50_000 + k)
                                 .expand_as(x).contiguous(), model.task_adapters[t])
                                for t in self.task_names
                                for k in range(self.params.qat.calib_batches)])
        ship_profile(sim, shared, float_path, path, path.with_suffix(".encodings"))
        seconds = report["seconds"] + time.perf_counter() - start
        sess = qdq_session(path, threads=1)     # the graph as specified (see qdq_session)
        names = [i.name for i in sess.get_inputs()]
        got = sess.run(None, dict(zip(names, (t.detach().numpy() for t in inputs))))[0]
        with torch.no_grad():
            ref = model(*inputs).numpy()
        q_abs = float(np.abs(got - ref).max())
        q_rel = q_abs / max(float(np.abs(ref).max()), 1e-12)
        import onnx
        from collections import Counter

        graph = onnx.load(str(path), load_external_data=False)
        floated = ExportResult.read(float_path)
        widths = Counter(self.bits_of(arch, s.name) for s in model.slots)
        result = dataclasses.replace(
            floated, path=str(path), input_names=names, seconds=seconds,
            graph_hash=_hash_file(path),
            ops=dict(sorted(Counter(n.op_type for n in graph.graph.node).items())),
            versions={**floated.versions, "opset": str(graph.opset_import[0].version)},
            note=(f"QDQ with the torch simulation's shared profile, {len(self.task_names)} "
                  f"tasks' adapters in the calibration, no QAT; layers by "
                  f"(weight, activation) bits: "
                  + ", ".join(f"w{w}a{a} {n}" for (w, a), n in sorted(widths.items()))
                  + f"; QDQ vs float model: max abs error {q_abs:.3g} "
                  f"({q_rel:.3g} relative, quantisation)"))
        Path(str(path) + ".json").write_text(json.dumps(result.to_dict(), indent=1))
        return result


class _Mix:
    """Training batches drawn from several tasks' data at once (the shared base)."""

    def __init__(self, datas):
        self.datas = datas

    def train_batch(self, batch_size: int, step: int):
        import torch

        per = max(batch_size // len(self.datas), 1)
        xs, ys = zip(*(d.train_batch(per, step) for d in self.datas))
        return torch.cat(xs), torch.cat(ys)
