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
    degradations by default, or paired folders).
``teacher``
    ``weights`` (a state dict to load instead of training), else ``steps``,
    ``batch_size``, ``lr``, ``seed`` of its training.
``distill``
    ``steps``, ``batch_size``, ``lr``, ``seed`` of the surrogates' distillation.
``input_size``
    the side of the default example input (for ``gmacs`` and ``latency``).

:meth:`HybridUNetSpace.prepare` trains (or loads) the teacher and distils the
surrogate bank (:mod:`.align`); afterwards :meth:`build` assembles any hybrid
from it with no retraining. Before ``prepare``, ``build`` gives a freshly
initialised network (enough for parameter and MAC counts).
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nasframe.architecture import Architecture
from nasframe.space import Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.context import Context

KINDS = ("transformer", "ssm")
GRANULARITIES = ("block", "stage")
NETWORK_KEYS = ("dim", "blocks", "refinement", "heads", "ffn_factor", "bias", "norm_bias", "ssm")
SSM_KEYS = ("d_state", "expand", "headdim", "orders", "mix", "rotate", "ffn_factor", "backend",
            "chunk")
TEACHER_DEFAULTS = {"weights": None, "steps": 600, "batch_size": 8, "lr": 2e-3, "seed": 0}
DISTILL_DEFAULTS = {"steps": 300, "batch_size": 8, "lr": 2e-3, "seed": 0}


def _check_keys(where: str, given: dict[str, Any], allowed: Sequence[str]) -> None:
    if not isinstance(given, dict):
        raise ValueError(f"`{where}` must be a mapping, got {given!r}")
    for key in given:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            raise ValueError(f"`{where}` has unknown key {key!r}; {did}allowed: {', '.join(allowed)}")


def _positive(where: str, value: Any, kind=int) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ValueError(f"`{where}` must be a positive {'integer' if kind is int else 'number'}, "
                         f"got {value!r}")
    return kind(value)


class HybridUNetSpace(SearchSpace):
    """Transformer or SSM block in every slot of a Restormer-style U-Net."""

    name = "hybrid_unet"

    def __init__(self, preset: str = "small", granularity: str = "block",
                 network: dict[str, Any] | None = None, task: str = "denoise",
                 data: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None,
                 distill: dict[str, Any] | None = None, input_size: int = 64):
        from search_spaces.hybrid_unet import network as net
        from search_spaces.hybrid_unet.data import TASKS

        if preset not in net.PRESETS:
            hint = difflib.get_close_matches(str(preset), net.PRESETS, n=1)
            raise ValueError(f"`preset` = {preset!r} is not one of {', '.join(net.PRESETS)}"
                             + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if granularity not in GRANULARITIES:
            raise ValueError(f"`granularity` = {granularity!r} is not one of "
                             f"{', '.join(GRANULARITIES)}")
        if task not in TASKS:
            raise ValueError(f"`task` = {task!r} is not one of {', '.join(TASKS)}")
        network = dict(network or {})
        _check_keys("network", network, NETWORK_KEYS)
        if "ssm" in network:
            _check_keys("network.ssm", network["ssm"], SSM_KEYS)
        for key in ("blocks", "heads"):
            if key in network:
                v = network[key]
                if not isinstance(v, (list, tuple)) or len(v) != 4:
                    raise ValueError(f"`network.{key}` must list 4 integers (encoder levels 1-3 "
                                     f"and the latent), got {v!r}")
                network[key] = tuple(_positive(f"network.{key}", x) for x in v)
        try:
            self.config = net.preset(preset, **network)
        except TypeError as err:
            raise ValueError(f"`network`: {err}") from None
        cfg = self.config
        for stage in net.STAGES:
            c, h = cfg.stage_channels(stage), cfg.stage_heads(stage)
            if c % h:
                raise ValueError(f"`network.heads`: stage {stage} has {c} channels, not divisible "
                                 f"by {h} heads; choose heads that divide dim x 1, 2, 4, 8")
        if cfg.ssm.orders not in (1, 2, 4):
            raise ValueError(f"`network.ssm.orders` = {cfg.ssm.orders!r}; use 1, 2 or 4 scan orders")
        if cfg.ssm.mix not in ("split", "sum"):
            raise ValueError(f"`network.ssm.mix` = {cfg.ssm.mix!r}; use `split` (each scan order "
                             "takes its share of the channels) or `sum` (MambaIR: all channels)")
        self.preset, self.granularity, self.task = preset, granularity, task
        self.data_params = dict(data or {})
        if "task" in self.data_params and self.data_params["task"] != task:
            raise ValueError(f"`data.task` = {self.data_params['task']!r} differs from `task` = "
                             f"{task!r}; set the task once, as `task`")
        teacher = dict(teacher or {})
        _check_keys("teacher", teacher, tuple(TEACHER_DEFAULTS))
        self.teacher_params = {**TEACHER_DEFAULTS, **teacher}
        distill = dict(distill or {})
        _check_keys("distill", distill, tuple(DISTILL_DEFAULTS))
        self.distill_params = {**DISTILL_DEFAULTS, **distill}
        for where, params in (("teacher", self.teacher_params), ("distill", self.distill_params)):
            for key in ("steps", "batch_size"):
                if not (where == "teacher" and params["weights"]):
                    _positive(f"{where}.{key}", params[key])
            _positive(f"{where}.lr", params["lr"], float)
        self.input_size = _positive("input_size", input_size)
        self.input_shape = (cfg.in_channels, self.input_size, self.input_size)
        self.slots = cfg.slots()
        if granularity == "block":
            self._names = [f"{s}_{i}" for s, i in self.slots]
        else:
            self._names = [s for s in net.STAGES if cfg.stage_blocks(s) > 0]
        self._decisions = tuple(Categorical(n, KINDS) for n in self._names)
        self._bank = None
        from search_spaces.hybrid_unet.data import RestorationData

        try:  # cheap: checks the params (and folder layouts); images load on first use
            self._data = RestorationData.from_params(self.data_params, task_default=task)
        except ValueError as err:
            raise ValueError(f"`data`: {err}") from None

    def __repr__(self) -> str:
        return (f"HybridUNetSpace(preset={self.preset!r}, granularity={self.granularity!r}, "
                f"task={self.task!r}, slots={len(self._names)})")

    # -- decisions ----------------------------------------------------------
    def decisions(self) -> Sequence[Decision]:
        return self._decisions

    def kinds(self, arch: Architecture) -> dict[str, list[str]]:
        """The kind of every block, by stage."""
        from search_spaces.hybrid_unet.network import STAGES

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
        from search_spaces.hybrid_unet.network import HybridRestormer

        model = HybridRestormer(self.config, self.kinds(arch))
        if self._bank is not None:
            model.load_state_dict(self._bank.state_for(model))
        return model

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """Nodes: ``embed``, every block (``kind`` transformer/ssm), the down/up samplers,
        skip merges and ``output``; ``channels`` and ``resolution`` (side in pixels at
        ``input_size``). Edges follow the data, skips included."""
        import networkx as nx

        from search_spaces.hybrid_unet.network import STAGES

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

    def transformer_count(self, arch: Architecture) -> int:
        return sum(k == "transformer" for ks in self.kinds(arch).values() for k in ks)

    # -- alignment ----------------------------------------------------------
    @property
    def data(self):
        """The task's :class:`.data.RestorationData`."""
        return self._data

    def validation_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation set as (degraded, clean) pairs of (1, 3, H, W) tensors."""
        return self.data.validation()

    @property
    def prepared(self) -> bool:
        return self._bank is not None

    def prepare(self, ctx: Context) -> None:
        """Teacher (trained or loaded) and the distilled SSM surrogate of every block; cached."""
        if self._bank is not None:
            return
        from search_spaces.hybrid_unet import align

        data = self.data
        teacher, t_report = align.prepare_teacher(self.config, data, ctx, self.teacher_params)
        ssm, s_report = align.prepare_surrogates(self.config, teacher, data, ctx, self.distill_params)
        self._bank = align.Bank({k: v.detach().clone() for k, v in teacher.state_dict().items()}, ssm)
        pairs = data.validation()
        teacher_psnr = align.evaluate_psnr(teacher, pairs)
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
