"""``hybrid_unet``: which block slots of a Restormer-style U-Net stay transformers (ENS).

Every block of the U-Net (:mod:`.network`) is a slot holding a ``transformer``
block (MDTA + GDFN) or an ``ssm`` block (MambaIR-style 2-D selective scan,
:mod:`.blocks`); both map ``(B, C, H, W)`` to the same shape, so any mix builds.

Params (YAML ``search_space.params``):

``preset``
    ``restormer`` (the published network: dim 48, blocks [4, 6, 6, 8], 4
    refinement, heads [1, 2, 4, 8], FFN 2.66, no bias, LayerNorm with bias; 44
    slots), ``small`` (the CPU examples: dim 16, blocks [1, 1, 1, 2], 1
    refinement; 9 slots) or ``tiny`` (the tests; 8 slots).
``granularity``
    ``block`` (one decision per block: ``enc1_0`` ... ``refine_3``) or ``stage``
    (one per stage, shared by its blocks: ``enc1``, ``enc2``, ``enc3``,
    ``latent``, ``dec3``, ``dec2``, ``dec1``, ``refine``).
``network``
    overrides of the preset: ``dim``, ``blocks``, ``refinement``, ``heads``,
    ``ffn_factor``, ``bias``, ``norm_bias``, and ``ssm`` (``d_state``,
    ``expand``, ``headdim``, ``orders``, ``mix``, ``rotate``, ``ffn_factor``,
    ``backend``, ``chunk``; see :class:`.network.SSMConfig`).
``task``, ``data``
    the restoration task (``denoise``, ``deblur``, ``derain``) and its data
    (:class:`.data.RestorationData` params: built-in photos with synthetic
    degradations by default, or paired folders, ``source: folders`` with
    ``train`` and ``val`` roots in a published layout, ``layout: rain13k``,
    ``gopro`` or ``sidd``, detected when left out, or the generic ``pairs``).
``teacher``
    ``weights`` (a state dict to load instead of training: this network's, or
    a published Restormer checkpoint as released, ``{"params": ...}`` with its
    own module names, see :mod:`.weights`; its LayerNorm type, WithBias or
    BiasFree, sets ``network.norm_bias`` unless that is given; a file that
    does not fit is a configuration error listing the missing and unexpected
    keys), else ``steps``, ``batch_size``, ``lr``, ``seed`` of its training.
``distill``
    ``steps``, ``batch_size``, ``lr``, ``seed`` of the surrogates' distillation;
    ``stitch: {steps, lr, loss}``, its optional second stage (the surrogates
    trained inside the teacher on its output, a random subset swapped in per step).
``input_size``
    the side of the default example input (for ``gmacs`` and ``latency``).

:meth:`HybridUNetSpace.prepare` trains (or loads) the teacher and distils the
surrogate bank (:mod:`.align`); afterwards :meth:`build` assembles any hybrid
from it with no retraining. Before ``prepare``, ``build`` gives a freshly
initialised network (enough for parameter and MAC counts).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nasframe.architecture import Architecture
from nasframe.capabilities import (BlockKinds, BlockLatencyParts, Exportable, Finetunable,
                                   ImageToImage,
                                   LatencyPart, TrainedWeights, ValidationPairs)
from nasframe.params import Bool, Field, Float, Int, ParamError, Params, PositiveInt
from nasframe.space import Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.context import Context

KINDS = ("transformer", "ssm")
Quad = tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt]


class SSMParams(Params):
    """Overrides of the preset's SSM block (null: the preset's value)."""

    d_state: Int | None = Field(None, ge=1, le=1024)
    """States per head."""
    expand: Float | None = Field(None, gt=0, le=16)
    """Inner width as a multiple of the block's channels."""
    headdim: Int | None = Field(None, ge=1, le=4096)
    """Channels per head (rounded to divide the inner width)."""
    orders: Literal[1, 2, 4] | None = None
    """Scan orders per block: 1, 2 or 4."""
    mix: Literal["split", "sum"] | None = None
    """split: each scan order takes its share of the channels; sum: all channels (MambaIR)."""
    rotate: Bool | None = None
    """Rotate the first scan direction from block to block."""
    ffn_factor: Float | None = Field(None, gt=0, le=16)
    """Hidden width of the block's gated FFN, as a multiple of its channels."""
    backend: Literal["auto", "chunked", "numba", "mamba_ssm", "sequential", "export"] | None = None
    """Scan backend (auto: mamba-ssm on CUDA, numba for CPU inference, chunked for training, export while exporting)."""
    chunk: Int | None = Field(None, ge=1, le=65_536)
    """Chunk length of the chunked scan."""


class NetworkParams(Params):
    """Overrides of the preset (null: the preset's value)."""

    dim: Int | None = Field(None, ge=1, le=4096)
    """Channels of the first level."""
    blocks: Quad | None = None
    """Blocks of encoder levels 1-3 and the latent (4 integers)."""
    refinement: Int | None = Field(None, ge=0, le=256)
    """Refinement blocks."""
    heads: Quad | None = None
    """Attention heads of levels 1-3 and the latent (4 integers)."""
    ffn_factor: Float | None = Field(None, gt=0, le=16)
    """GDFN hidden width as a multiple of the channels."""
    bias: Bool | None = None
    """Biases in convolutions."""
    norm_bias: Bool | None = None
    """Biases in LayerNorms: true is Restormer's WithBias, false its BiasFree (null: the preset's, or the type of `teacher.weights`)."""
    ssm: SSMParams = SSMParams()
    """The SSM block's hyper-parameters."""

    def overrides(self) -> dict[str, Any]:
        out = {k: v for k, v in self.model_dump().items() if v is not None and k != "ssm"}
        ssm = {k: v for k, v in self.ssm.model_dump().items() if v is not None}
        if ssm:
            out["ssm"] = ssm
        return out


class TeacherParams(Params):
    weights: str | None = Field(None, min_length=1)
    """A state dict to load (safely) instead of training: this network's or a published Restormer checkpoint (deraining.pth ...)."""
    steps: Int = Field(600, ge=1, le=10_000_000)
    """Training steps of the all-transformer teacher."""
    batch_size: Int = Field(8, ge=1, le=4096)
    """Crops per training step."""
    lr: Float = Field(2e-3, gt=0, le=10)
    """AdamW learning rate (cosine decay)."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the training (default: the experiment's seed)."""


class StitchParams(Params):
    steps: Int = Field(0, ge=0, le=10_000_000)
    """Steps of stitched distillation after the feature distillation (0: none): each step
    swaps a random subset of the surrogates into the teacher and trains them on the
    network's output against the teacher's."""
    lr: Float = Field(1e-3, gt=0, le=10)
    """AdamW learning rate (cosine decay)."""
    loss: Literal["l1", "mse"] = "l1"
    """Loss between the stitched network's output and the teacher's."""


class DistillParams(Params):
    steps: Int = Field(300, ge=1, le=10_000_000)
    """Distillation steps of the SSM surrogates (all trained together)."""
    batch_size: Int = Field(8, ge=1, le=4096)
    """Crops per distillation step."""
    lr: Float = Field(2e-3, gt=0, le=10)
    """Adam learning rate."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the surrogates' initialisation (default: the experiment's seed)."""
    stitch: StitchParams = StitchParams()
    """Second stage: the surrogates trained inside the teacher on its output (steps, lr, loss)."""


class HybridUNetSpace(SearchSpace, ValidationPairs, TrainedWeights, BlockKinds, ImageToImage,
                      BlockLatencyParts, Exportable, Finetunable):
    """Transformer or SSM block in every slot of a Restormer-style U-Net."""

    name = "hybrid_unet"
    dependencies = ("skimage",)
    install_hint = "pip install 'nasframe[restoration]'"
    small_params = {"preset": "tiny", "granularity": "stage", "input_size": 16,
                    "data": {"short_side": 48, "val_size": 32, "patch": 16},
                    "teacher": {"steps": 3, "batch_size": 2},
                    "distill": {"steps": 3, "batch_size": 2}}

    class Params(Params):
        preset: Literal["restormer", "small", "tiny"] = "small"
        """restormer (published, 44 slots), small (CPU examples, 9 slots) or tiny (tests, 8 slots)."""
        granularity: Literal["block", "stage"] = "block"
        """One decision per block, or one per stage shared by its blocks."""
        network: NetworkParams = NetworkParams()
        """Overrides of the preset: dim, blocks, refinement, heads, ffn_factor, bias, norm_bias, ssm."""
        task: Literal["denoise", "deblur", "derain"] = "denoise"
        """The restoration task."""
        data: dict[str, Any] = {}
        """RestorationData params: source (synthetic | folders), patch, val_size, seed, degradations; folders: train, val, layout (pairs | rain13k | gopro | sidd; detected when left out)."""
        teacher: TeacherParams = TeacherParams()
        """The all-transformer teacher: weights to load, or steps, batch_size, lr, seed of its training."""
        distill: DistillParams = DistillParams()
        """The SSM surrogates' distillation: steps, batch_size, lr, seed; stitch (second stage)."""
        input_size: Int = Field(64, ge=8, le=8192)
        """Side of the default example input (gmacs, latency)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        from nasframe_search_spaces.hybrid_unet import network as net
        from nasframe_search_spaces.hybrid_unet.data import RestorationData

        p = self.params
        overrides = p.network.overrides()
        state = None
        if p.teacher.weights is not None:
            from pathlib import Path

            from nasframe_search_spaces.hybrid_unet import weights

            if not Path(p.teacher.weights).expanduser().is_file():
                raise ParamError("teacher.weights", f"no file at {p.teacher.weights!r}; give the "
                                 "path of a state dict saved with torch.save(model.state_dict(), "
                                 "path), or of a published Restormer checkpoint")
            # read now, so that `validate` finds a file that does not fit; the LayerNorm type
            # (Restormer's WithBias or BiasFree) follows the file unless norm_bias is set
            state = weights.to_network_keys(weights.read_state(p.teacher.weights))
            if "norm_bias" not in overrides and weights.file_norm_bias(state) is not None:
                overrides["norm_bias"] = weights.file_norm_bias(state)
        self.config = net.preset(p.preset, **overrides)
        cfg = self.config
        for stage in net.STAGES:
            c, h = cfg.stage_channels(stage), cfg.stage_heads(stage)
            if c % h:
                raise ParamError("network.heads", f"stage {stage} has {c} channels, not divisible "
                                 f"by {h} heads; choose heads that divide dim x 1, 2, 4, 8")
        self.preset, self.granularity, self.task = p.preset, p.granularity, p.task
        self.data_params = dict(p.data)
        if "task" in self.data_params and self.data_params["task"] != p.task:
            raise ParamError("data.task", f"{self.data_params['task']!r} differs from `task` = "
                             f"{p.task!r}; set the task once, as `task`")
        if state is not None:
            weights.check_fits(state, cfg, repr(p.teacher.weights))
            del state
        self.teacher_params = p.teacher.model_dump()
        self.distill_params = p.distill.model_dump()
        self.input_size = p.input_size
        self.input_shape = (cfg.in_channels, self.input_size, self.input_size)
        self.slots = cfg.slots()
        if p.granularity == "block":
            self._names = [f"{s}_{i}" for s, i in self.slots]
        else:
            self._names = [s for s in net.STAGES if cfg.stage_blocks(s) > 0]
        self._decisions = tuple(Categorical(n, KINDS) for n in self._names)
        self._bank = None
        try:  # cheap: checks the params (and folder layouts); images load on first use
            self._data = RestorationData.from_params(self.data_params, task_default=p.task)
        except ValueError as err:
            raise ParamError("data", str(err)) from None
        self._seed = 0   # the experiment's seed, once prepare() knows it

    def __repr__(self) -> str:
        return (f"HybridUNetSpace(preset={self.preset!r}, granularity={self.granularity!r}, "
                f"task={self.task!r}, slots={len(self._names)})")

    # -- decisions ----------------------------------------------------------
    def decisions(self) -> Sequence[Decision]:
        return self._decisions

    def kinds(self, arch: Architecture) -> dict[str, list[str]]:
        """The kind of every block, by stage."""
        from nasframe_search_spaces.hybrid_unet.network import STAGES

        out: dict[str, list[str]] = {s: [] for s in STAGES}
        for stage, i in self.slots:
            out[stage].append(arch[f"{stage}_{i}"] if self.granularity == "block" else arch[stage])
        return out

    def uniform(self, kind: str) -> Architecture:
        return Architecture({n: kind for n in self._names})

    def reference_architectures(self) -> dict[str, Architecture]:
        """``teacher`` (every slot a transformer) and ``all_ssm`` (every slot an SSM block)."""
        return {"teacher": self.uniform("transformer"), "all_ssm": self.uniform("ssm")}

    # -- models -------------------------------------------------------------
    def build(self, arch: Architecture) -> torch.nn.Module:
        from nasframe_search_spaces.hybrid_unet.network import HybridRestormer

        model = HybridRestormer(self.config, self.kinds(arch))
        if self._bank is not None:
            model.load_state_dict(self._bank.state_for(model))
        return model

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """Nodes: ``embed``, every block (``kind`` transformer/ssm), the down/up samplers,
        skip merges and ``output``; ``channels`` and ``resolution`` (side in pixels at
        ``input_size``). Edges follow the data, skips included."""
        import networkx as nx

        from nasframe_search_spaces.hybrid_unet.network import STAGES

        cfg, side = self.config, self.input_size
        kinds = self.kinds(arch)
        g = nx.DiGraph(global_residual=True)
        g.add_node("embed", kind="conv", channels=cfg.dim, resolution=side)
        prev = "embed"
        last: dict[str, str] = {}
        transitions = {"enc2": ("down1_2", "enc1"), "enc3": ("down2_3", "enc2"),
                       "latent": ("down3_4", "enc3"), "dec3": ("up4_3", "latent"),
                       "dec2": ("up3_2", "dec3"), "dec1": ("up2_1", "dec2")}
        skips = {"dec3": "enc3", "dec2": "enc2", "dec1": "enc1"}
        for stage in STAGES:
            mult, div, _, _ = STAGES[stage]
            res, ch = side // div, cfg.dim * mult
            if stage in transitions:
                node, _ = transitions[stage]
                kind = "downsample" if node.startswith("down") else "upsample"
                in_ch = cfg.stage_channels(transitions[stage][1])
                g.add_node(node, kind=kind, channels=in_ch * 2 if kind == "downsample" else in_ch // 2,
                           resolution=res)
                g.add_edge(prev, node)
                prev = node
            if stage in skips:
                merge = f"merge_{stage}"
                g.add_node(merge, kind="concat" if stage == "dec1" else "concat_reduce",
                           channels=ch, resolution=res)
                g.add_edge(prev, merge)
                g.add_edge(last[skips[stage]], merge)
                prev = merge
            for i, kind in enumerate(kinds[stage]):
                node = f"{stage}_{i}"
                g.add_node(node, kind=kind, channels=ch, resolution=res, stage=stage,
                           heads=cfg.stage_heads(stage))
                g.add_edge(prev, node)
                prev = node
            last[stage] = prev
        g.add_node("output", kind="conv", channels=cfg.out_channels, resolution=side)
        g.add_edge(prev, "output")
        return g

    def export_module(self, arch: Architecture, model: torch.nn.Module,
                      part: str | None = None) -> torch.nn.Module:
        """A copy of ``model`` whose SSM blocks scan with the ``export`` backend (plain tensor
        ops, rank <= 4, no CumSum/Where: see :mod:`.scan`); the same function as every other
        backend. ``model`` itself is left as it is."""
        import copy

        from nasframe_search_spaces.hybrid_unet.blocks import SS2D

        ready = copy.deepcopy(model)
        for m in ready.modules():
            if isinstance(m, SS2D):
                m.backend = "export"
        return ready

    def transformer_count(self, arch: Architecture) -> int:
        return sum(k == "transformer" for ks in self.kinds(arch).values() for k in ks)

    # -- latency lookup table: one entry per (kind, stage shape) ---------------
    def _latency_part(self, kind: str, stage: str, input_shape) -> LatencyPart:
        from functools import partial

        from nasframe_search_spaces.hybrid_unet.network import STAGES, make_block

        cfg = self.config
        b, _, h, w = input_shape
        h, w = h + (-h) % 8, w + (-w) % 8         # the network pads to a multiple of 8
        div = STAGES[stage][1]
        shape = (b, cfg.stage_channels(stage), h // div, w // div)
        heads = cfg.stage_heads(stage)
        key = f"{kind}:h{heads}:{'x'.join(map(str, shape))}"
        return LatencyPart(key, partial(make_block, kind, shape[1], heads, cfg), (shape,))

    def latency_variants(self, input_shape):
        out: dict[str, LatencyPart] = {}
        for stage, _ in self.slots:
            for kind in KINDS:
                part = self._latency_part(kind, stage, input_shape)
                out.setdefault(part.key, part)
        return list(out.values())

    def latency_parts(self, arch, input_shape):
        """Every block's (kind, channels, heads, resolution); an SSM block's scan direction
        (its position) does not change its cost, so it is not part of the key."""
        return [self._latency_part(kind, stage, input_shape)
                for stage, ks in self.kinds(arch).items() for kind in ks]

    # -- alignment ----------------------------------------------------------
    @property
    def data(self):
        """The task's :class:`.data.RestorationData`."""
        return self._data

    def validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation set as (degraded, clean) pairs of (1, 3, H, W) tensors."""
        return self.data.validation()

    def finetune(self, model: torch.nn.Module, steps: int, *, seed: int, lr: float | None = None,
                 on_step=None, accel=None) -> None:
        """End-to-end fine-tuning on the task's training crops (L1, AdamW, 10 % warm-up then
        cosine decay; the teacher's batch size), batches drawn from ``seed``; on ``accel``
        (default: the CPU), where the model is left."""
        from nasframe.accel import CPU
        from nasframe_search_spaces.hybrid_unet.align import train_model

        t = self.params.teacher
        train_model(model, self.data, steps=steps, batch_size=t.batch_size,
                    lr=lr if lr is not None else 1e-4, warmup=max(steps // 10, 1),
                    step_offset=3_000_000 + (seed % 1_000_000) * 64, on_step=on_step,
                    accel=accel or CPU)

    @property
    def prepared(self) -> bool:
        return self._bank is not None

    def block_kinds(self) -> dict[str, str]:
        return {"transformer": "a Restormer block (MDTA + GDFN)",
                "ssm": "a MambaIR-style selective-scan block"}

    def _use_seed(self, seed: int) -> None:
        """Re-make the data with the experiment's seed unless `data.seed` is set."""
        if seed == self._seed or "seed" in self.data_params:
            return
        from nasframe_search_spaces.hybrid_unet.data import RestorationData

        self._seed = seed
        self._data = RestorationData.from_params(self.data_params, task_default=self.task,
                                                 seed=seed)

    def prepare(self, ctx: Context, needs=frozenset()) -> None:
        """Only with :class:`~nasframe.capabilities.TrainedWeights` in ``needs``: the
        teacher (trained or loaded) and the distilled SSM surrogate of every block;
        cached. Cost objectives need neither, so nothing is trained for them."""
        self._use_seed(ctx.seed)
        if TrainedWeights not in needs or self._bank is not None:
            return
        from nasframe_search_spaces.hybrid_unet import align

        data = self.data
        teacher_params = {**self.teacher_params, "seed": ctx.seed_for(self.teacher_params["seed"])}
        distill_params = {**self.distill_params, "seed": ctx.seed_for(self.distill_params["seed"])}
        teacher, t_report = align.prepare_teacher(self.config, data, ctx, teacher_params)
        ssm, s_report = align.prepare_surrogates(self.config, teacher, data, ctx, distill_params)
        self._bank = align.Bank({k: v.detach().cpu().clone()
                                 for k, v in teacher.state_dict().items()}, ssm)
        pairs = data.validation()
        teacher_psnr = align.evaluate_psnr(teacher, pairs, accel=ctx.accel)
        input_psnr = float(np.mean([align.psnr(i, t) for i, t in pairs]))
        report = {"task": self.task, "preset": self.preset, "teacher": t_report,
                  "teacher_psnr": teacher_psnr, "input_psnr": input_psnr, "surrogates": s_report}
        self._bank.report = report
        align.write_report(ctx, report)
        rel = s_report["relative_mse"]
        rel0 = s_report["relative_mse_untrained"]
        ctx.log(f"[hybrid_unet] teacher PSNR {teacher_psnr:.2f} dB on {len(pairs)} validation "
                f"images (inputs {input_psnr:.2f} dB); {len(rel)} SSM surrogates, feature error "
                f"{np.mean(list(rel.values())):.3f} relative MSE (untrained "
                f"{np.mean(list(rel0.values())):.3f})")
        if "stitch" in s_report:
            err = s_report["stitch"]["output_error"]
            err0 = s_report["stitch"]["output_error_before"]
            ctx.log(f"[hybrid_unet] stitched {s_report['stitch']['steps']} steps: output error "
                    f"with every surrogate in {err0['all']:.2e} -> {err['all']:.2e} relative "
                    f"MSE; the worst alone {max(err0[n] for n in rel):.2e} -> "
                    f"{max(err[n] for n in rel):.2e}")
