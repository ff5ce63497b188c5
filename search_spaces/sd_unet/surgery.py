"""Network surgery: a candidate U-Net inherits its teacher's weights.

A kept block keeps its teacher's name (:mod:`.network`), so inheritance is a
name lookup. A narrowed block takes a subset of its teacher's channels, chosen
by this **importance rule** (filter magnitude, as in L1-norm filter pruning):

* *Level channels.* Every tensor dimension that carries a resolution level's
  feature maps (resnet inputs and outputs, shortcuts, samplers, the attention's
  GroupNorm/``proj_in`` input and ``proj_out`` output, ``conv_in``,
  ``conv_out``) takes one subset per level, so the skips and residual sums stay
  aligned. A channel's importance is the sum, over every teacher layer that
  writes into that level (``conv_in``, each resnet's ``conv2`` and shortcut,
  each attention's ``proj_out``, the samplers), of the L1 norm of the filter
  producing it, each layer's norms divided by their mean so that no layer
  dominates by scale. Levels joined by an identity residual share one subset.
* *Block-internal channels* are ranked the same way by the layers that produce
  them: a resnet's middle channels by ``conv1`` and ``time_emb_proj``, an
  attention's inner width by ``proj_in``, both ``to_out`` and ``ff.net.2``;
  query/key dimensions per head by ``to_q`` + ``to_k``, value dimensions per
  head by ``to_v`` + the matching ``to_out`` columns (heads are kept, each
  narrowed equally); the GEGLU's hidden units by both halves of its projection
  and ``ff.net.2``'s columns.

The top-k channels are kept in their original order. GroupNorm affine
parameters take the same subset as the channels they scale.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nasframe_search_spaces.sd_unet.network import SDUNet, UNetConfig, UNetPlan, from_diffusers_keys

Index = torch.Tensor | None


def _row_norms(w: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter, divided by the mean (scale-free)."""
    n = w.detach().float().reshape(w.shape[0], -1).abs().sum(1)
    return n / n.mean().clamp_min(1e-12)


def _col_norms(w: torch.Tensor) -> torch.Tensor:
    n = w.detach().float().transpose(0, 1).reshape(w.shape[1], -1).abs().sum(1)
    return n / n.mean().clamp_min(1e-12)


def _top(score: torch.Tensor, k: int) -> Index:
    if k >= score.numel():
        return None
    return torch.sort(torch.topk(score, k).indices).values


def _top_per_head(score: torch.Tensor, heads: int, k_per_head: int) -> Index:
    d = score.numel() // heads
    if k_per_head >= d:
        return None
    idx = [torch.sort(torch.topk(score[h * d:(h + 1) * d], k_per_head).indices).values + h * d
           for h in range(heads)]
    return torch.cat(idx)


def _take(t: torch.Tensor, dims: dict[int, Index]) -> torch.Tensor:
    for dim, idx in dims.items():
        if idx is not None:
            t = t.index_select(dim, idx)
    return t


def _cat(a: Index, a_size: int, b: Index, b_size: int) -> Index:
    if a is None and b is None:
        return None
    a = torch.arange(a_size) if a is None else a
    b = torch.arange(b_size) if b is None else b
    return torch.cat([a, b + a_size])


# ------------------------------------------------------------------ level channels
def level_importance(teacher: Mapping[str, torch.Tensor], config: UNetConfig) -> list[torch.Tensor]:
    """Importance of every channel of every level (shared within stream groups)."""
    scores = [torch.zeros(c) for c in config.block_out_channels]

    def add(level: int, w: torch.Tensor) -> None:
        scores[level] += _row_norms(w)

    add(0, teacher["conv_in.weight"])
    for name, w in teacher.items():
        m = re.match(r"^(down|up)\.(\d+)\.(pairs\.\d+\.(resnet\.(conv2|conv_shortcut)|attention\.proj_out)|"
                     r"sampler\.conv)\.weight$", name)
        if m:
            i = int(m.group(2))
            add(i if m.group(1) == "down" else config.up_level(i), w)
        elif re.match(r"^mid\.(resnets\.\d+\.(conv2|conv_shortcut)|attentions\.\d+\.proj_out)\.weight$",
                      name):
            add(config.levels - 1, w)
    for group in config.stream_groups():
        total = sum(scores[level] for level in group)
        for level in group:
            scores[level] = total
    return scores


def level_indices(teacher: Mapping[str, torch.Tensor], plan: UNetPlan) -> list[Index]:
    """The kept channel subset of every level at ``plan.widths`` (None: all kept)."""
    scores = level_importance(teacher, plan.config)
    return [_top(s, w) for s, w in zip(scores, plan.widths)]


# ------------------------------------------------------------------ per-module rules
def _resnet(t: Mapping[str, torch.Tensor], p: str, in_idx: Index, out_idx: Index,
            width: int) -> dict[str, dict[int, Index]]:
    mid = _top(_row_norms(t[f"{p}conv1.weight"]) + _row_norms(t[f"{p}time_emb_proj.weight"]), width)
    spec = {
        "norm1.weight": {0: in_idx}, "norm1.bias": {0: in_idx},
        "conv1.weight": {0: mid, 1: in_idx}, "conv1.bias": {0: mid},
        "time_emb_proj.weight": {0: mid}, "time_emb_proj.bias": {0: mid},
        "norm2.weight": {0: mid}, "norm2.bias": {0: mid},
        "conv2.weight": {0: out_idx, 1: mid}, "conv2.bias": {0: out_idx},
        "conv_shortcut.weight": {0: out_idx, 1: in_idx}, "conv_shortcut.bias": {0: out_idx},
    }
    return {p + k: v for k, v in spec.items()}


def _transformer(t: Mapping[str, torch.Tensor], p: str, c_idx: Index, width: int,
                 heads: int) -> dict[str, dict[int, Index]]:
    b = f"{p}transformer_blocks.0."
    inner = _top(_row_norms(t[f"{p}proj_in.weight"]) + _row_norms(t[f"{b}attn1.to_out.0.weight"])
                 + _row_norms(t[f"{b}attn2.to_out.0.weight"]) + _row_norms(t[f"{b}ff.net.2.weight"]),
                 width)
    spec: dict[str, dict[int, Index]] = {
        "norm.weight": {0: c_idx}, "norm.bias": {0: c_idx},
        "proj_in.weight": {0: inner, 1: c_idx}, "proj_in.bias": {0: inner},
        "proj_out.weight": {0: c_idx, 1: inner}, "proj_out.bias": {0: c_idx},
    }
    for n in ("norm1", "norm2", "norm3"):
        spec[f"transformer_blocks.0.{n}.weight"] = {0: inner}
        spec[f"transformer_blocks.0.{n}.bias"] = {0: inner}
    for a in ("attn1", "attn2"):
        q, k, v, o = (t[f"{b}{a}.{n}.weight"] for n in ("to_q", "to_k", "to_v", "to_out.0"))
        per_head = width // heads
        qk = _top_per_head(_row_norms(q) + _row_norms(k), heads, per_head)
        vo = _top_per_head(_row_norms(v) + _col_norms(o), heads, per_head)
        ctx_in = inner if a == "attn1" else None      # cross-attention reads the text embedding
        spec[f"transformer_blocks.0.{a}.to_q.weight"] = {0: qk, 1: inner}
        spec[f"transformer_blocks.0.{a}.to_k.weight"] = {0: qk, 1: ctx_in}
        spec[f"transformer_blocks.0.{a}.to_v.weight"] = {0: vo, 1: ctx_in}
        spec[f"transformer_blocks.0.{a}.to_out.0.weight"] = {0: inner, 1: vo}
        spec[f"transformer_blocks.0.{a}.to_out.0.bias"] = {0: inner}
    proj, out = t[f"{b}ff.net.0.proj.weight"], t[f"{b}ff.net.2.weight"]
    hidden = out.shape[1]
    ff = _top(_row_norms(proj[:hidden]) + _row_norms(proj[hidden:]) + _col_norms(out), 4 * width)
    geglu = None if ff is None else torch.cat([ff, ff + hidden])
    spec["transformer_blocks.0.ff.net.0.proj.weight"] = {0: geglu, 1: inner}
    spec["transformer_blocks.0.ff.net.0.proj.bias"] = {0: geglu}
    spec["transformer_blocks.0.ff.net.2.weight"] = {0: inner, 1: ff}
    spec["transformer_blocks.0.ff.net.2.bias"] = {0: inner}
    return {p + k: v for k, v in spec.items()}


def pair_io(plan: UNetPlan, where: str, i: int, j: int, levels: list[Index]) -> tuple[Index, Index]:
    """The teacher channels of pair ``j`` of ``where`` stage ``i``'s input (for an
    up pair: the features from below, then the skip) and output (None: all)."""
    cfg, lv = plan.config, levels
    if where == "down":
        return (lv[i - 1] if (j == 0 and i > 0) else lv[i]), lv[i]
    level = cfg.up_level(i)
    prev = level + 1 if (j == 0 and level + 1 < cfg.levels) else level
    skip = level if j < cfg.up_pairs() - 1 else max(level - 1, 0)
    full = cfg.block_out_channels
    return _cat(lv[prev], full[prev], lv[skip], full[skip]), lv[level]


def slicing(teacher: Mapping[str, torch.Tensor], plan: UNetPlan,
            levels: list[Index] | None = None) -> dict[str, dict[int, Index]]:
    """For every parameter of ``plan``'s U-Net: the teacher channel subset of each
    narrowed dimension (absent or None: the dimension is kept whole)."""
    cfg, w = plan.config, plan.widths
    lv = level_indices(teacher, plan) if levels is None else levels
    spec: dict[str, dict[int, Index]] = {
        "conv_in.weight": {0: lv[0]}, "conv_in.bias": {0: lv[0]},
        "conv_norm_out.weight": {0: lv[0]}, "conv_norm_out.bias": {0: lv[0]},
        "conv_out.weight": {1: lv[0]},
    }
    inner = plan.levels - 1
    for where in ("down", "up"):
        for i, level in plan.stages(where):
            for j, attention in plan.kept(where, i):
                p = f"{where}.{i}.pairs.{j}."
                in_idx, out_idx = pair_io(plan, where, i, j, lv)
                spec.update(_resnet(teacher, p + "resnet.", in_idx, out_idx, w[level]))
                if attention:
                    spec.update(_transformer(teacher, p + "attention.", lv[level], w[level], cfg.heads))
            spec[f"{where}.{i}.sampler.conv.weight"] = {0: lv[level], 1: lv[level]}
            spec[f"{where}.{i}.sampler.conv.bias"] = {0: lv[level]}
        if where == "down" and plan.mid:
            for r in (0, 1):
                spec.update(_resnet(teacher, f"mid.resnets.{r}.", lv[inner], lv[inner], w[inner]))
            spec.update(_transformer(teacher, "mid.attentions.0.", lv[inner], w[inner], cfg.heads))
    return spec


def inherit(student: SDUNet, teacher: Mapping[str, torch.Tensor],
            levels: list[Index] | None = None) -> SDUNet:
    """Load ``teacher`` (an :class:`SDUNet`-named state dict of the full-width
    teacher) into ``student``: kept blocks whole, narrowed ones by the importance
    rule. Every student tensor but the surrogate blocks' comes from the teacher;
    returns ``student``."""
    spec = slicing(teacher, student.plan, levels)
    state = {}
    for name, param in student.state_dict().items():
        if ".surrogate." in name:                 # surrogate blocks have no teacher tensors
            state[name] = param
            continue
        if name not in teacher:
            raise KeyError(f"teacher has no tensor {name!r}")
        t = _take(teacher[name], spec.get(name, {}))
        if t.shape != param.shape:
            raise ValueError(f"{name}: teacher slice {tuple(t.shape)} does not fit the "
                             f"student's {tuple(param.shape)}")
        state[name] = t.to(param.dtype)
    student.load_state_dict(state)
    return student


# ------------------------------------------------------------------ loading a teacher
#: weight files looked for in a model folder, in this order (fp16 ones are loaded as float32)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
                "model.safetensors")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or (``weights_only=True``) ``torch.load``;
    ValueError naming the file when it cannot be read safely."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:          # pickled code, not plain tensors
        raise ValueError(f"{path}: cannot be loaded safely with weights_only=True ({err}); "
                         "convert it to .safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def find_weights(path: str | Path, subfolder: str, what: str) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) of a model at ``path``: a diffusers
    pipeline folder (``subfolder``/ inside, e.g. ``unet``), the model's own
    folder, or a weights file; ``what`` names it in errors (``U-Net``, ``VAE``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a diffusers pipeline folder (with "
                         f"{subfolder}/), a {what} folder (config.json + "
                         "diffusion_pytorch_model.safetensors) or a .safetensors file")
    if path.is_file():
        return path, None
    folder = path / subfolder if (path / subfolder).is_dir() else path
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            config = folder / "config.json"
            return folder / name, config if config.exists() else None
    hint = (f" (a pipeline folder needs a {subfolder}/ subfolder)"
            if (path / "model_index.json").exists()
            or any((path / other).is_dir() for other in ("unet", "vae", "text_encoder")) else "")
    raise ValueError(f"{folder} holds no diffusion_pytorch_model.safetensors (or .bin){hint}; "
                     f"give a diffusers pipeline folder, a {what} folder or a .safetensors file")


#: key prefixes of the original (CompVis / LDM) checkpoint layout
ORIGINAL_UNET_PREFIX = "model.diffusion_model."
ORIGINAL_VAE_PREFIXES = ("first_stage_model.", "encoder.down.", "decoder.up.")


def is_original_layout(state: Mapping[str, Any], kind: str) -> bool:
    """Whether ``state`` holds ``kind`` (``unet``/``vae``) in the original SD (LDM) layout."""
    prefixes = (ORIGINAL_UNET_PREFIX,) if kind == "unet" else ORIGINAL_VAE_PREFIXES
    return any(k.startswith(prefixes) for k in state)


def from_original(state: dict[str, torch.Tensor], kind: str, diffusers_config: dict[str, Any],
                  source: Path) -> dict[str, torch.Tensor]:
    """A checkpoint in the original SD (CompVis/LDM) layout, e.g. ``v1-5-pruned-emaonly``,
    converted to diffusers names by diffusers' own single-file loader
    (``UNet2DConditionModel`` / ``AutoencoderKL.from_single_file``), offline: the model's
    config is the preset's (``diffusers_config``), written to a temporary folder and given
    as ``config=`` with ``local_files_only``, so nothing is fetched from the hub.
    ``kind``: ``unet`` or ``vae``. ValueError naming the file when diffusers cannot map it."""
    import json
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[kind]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps({"_class_name": cls.__name__,
                                                              **diffusers_config}))
        try:
            model = cls.from_single_file(state, config=folder, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - diffusers raises many kinds; name the file
            raise ValueError(f"{source}: an original-SD (LDM) checkpoint that diffusers' "
                             f"{cls.__name__}.from_single_file could not convert with the "
                             f"preset's config ({type(err).__name__}: {err}); is it this "
                             "preset's model? Or convert it yourself and give the folder") from None
    converted = {k: v.detach() for k, v in model.state_dict().items()}
    # diffusers leaves what the checkpoint lacks at its initialisation: count the sources
    if kind == "unet":
        given = sum(k.startswith(ORIGINAL_UNET_PREFIX) for k in state)
    else:
        prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in state) else ""
        given = sum(k.startswith(tuple(prefix + p for p in ("encoder.", "decoder.", "quant_conv.",
                                                             "post_quant_conv.")))
                    for k in state)
    if given != len(converted):
        raise ValueError(f"{source}: an original-SD (LDM) checkpoint with {given} {kind} tensors; "
                         f"the preset's {cls.__name__} has {len(converted)}: is it this preset's "
                         "model, and whole?")
    return converted


def find_unet_files(path: str | Path) -> tuple[Path, Path | None]:
    """:func:`find_weights` for the U-Net (``unet/`` in a pipeline folder)."""
    return find_weights(path, "unet", "U-Net")


def load_teacher(path: str | Path, config: UNetConfig) -> dict[str, torch.Tensor]:
    """The teacher's state dict under :class:`SDUNet` names, checked against ``config``
    (its ``config.json`` when there is one, then every tensor's name and shape).

    Accepts diffusers names (``down_blocks.0.resnets.0...``), this module's
    names, and single-file checkpoints in the original SD layout
    (``model.diffusion_model.*``, e.g. ``v1-5-pruned-emaonly.safetensors``):
    those are converted offline by :func:`from_original` with the preset's config."""
    import json

    weights, config_file = find_unet_files(path)
    if config_file is not None:
        theirs = UNetConfig.from_diffusers(json.loads(config_file.read_text()))
        diffs = [f"{k}: {getattr(theirs, k)!r} (preset {getattr(config, k)!r})"
                 for k in ("in_channels", "out_channels", "block_out_channels",
                           "layers_per_block", "attention", "heads", "cross_attention_dim",
                           "norm_num_groups")
                 if getattr(theirs, k) != getattr(config, k)]
        if diffs:
            raise ValueError(f"{config_file} does not match the preset: {'; '.join(diffs)}; "
                             "choose the matching `preset`")
    state = load_weights(weights)
    if is_original_layout(state, "unet"):
        state = from_original(state, "unet", config.to_diffusers(), weights)
    state = from_diffusers_keys(state)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in SDUNet(UNetPlan.teacher(config)).state_dict().items()}
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} tensor(s) of the preset's U-Net, e.g. "
                         f"{missing[:3]}; is it the U-Net of this preset?")
    bad = [f"{k} {tuple(state[k].shape)} != {s}" for k, s in shapes.items() if tuple(state[k].shape) != s]
    if bad:
        raise ValueError(f"{weights}: shapes differ from the preset's U-Net: {bad[:3]}")
    return {k: state[k].float() for k in shapes}


def teacher_digest(state: Mapping[str, Any]) -> str:
    from nasframe.distill import module_digest

    return module_digest(dict(state))
