"""``sd_unet``: shrink a Stable-Diffusion U-Net (and its VAE) by block removal and narrowing.

Serves TOC-SR and NanoSD: remove (resnet, attention) pairs, drop attentions,
remove the mid block and the innermost stage, narrow each resolution level;
every candidate inherits its teacher's weights (:mod:`.surgery`), and the
``fidelity`` objective measures how closely it still follows the teacher.

Decisions (names follow diffusers' block indices; up stage 0 is the innermost):

``down{i}_{j}`` / ``up{i}_{j}``
    pair ``j`` of down/up stage ``i``: ``full`` (resnet + attention),
    ``resnet`` (attention dropped: a residual-only variant; only in stages with
    attention) or ``removed``. Limit the choices with ``pairs``.
``mid``, ``innermost``
    keep (true) or remove (false) the mid block / the innermost level (its
    down stage, its up stage, and the downsampler before it), when ``mid`` /
    ``innermost`` is ``search``.
``width{l}``
    the width multiplier of level ``l`` (one of ``widths``); levels joined by an
    identity residual (SD 1.5: levels 2 and 3, and the mid block) share one.
``vae_enc_width``, ``vae_dec_width``, ``vae_enc_layers``, ``vae_dec_layers``
    with ``vae: {search: true}``: the VAE encoder's / decoder's width multiplier
    and resnets per stage (NanoSD's full-pipeline scaling), from ``vae``'s
    ``enc_widths``, ``dec_widths``, ``enc_layers``, ``dec_layers`` (a list of one
    value fixes it; without search the VAE is the teacher's). The VAE is the
    ``vae_encoder`` / ``vae_decoder`` part for ``params``/``gmacs``/``latency``
    and ``fidelity``; ``pipeline`` is one U-Net step plus the decoder.

Validation rejects what cannot build a consistent network, with the reason:
an up stage must keep one pair more than its down stage (each up pair consumes
one skip), and the pairs that change the width or read the skip of the level
above must stay (:meth:`.network.UNetPlan.check`).

Params: ``preset`` (``sd15``, ``latent16``, ``tiny``), ``pairs``, ``widths``,
``mid``/``innermost`` (``search``, ``keep``, ``remove``), ``vae``,
``teacher`` (``path``: a diffusers folder, a U-Net folder or a
``.safetensors`` file; else a randomly initialised teacher from ``seed``),
``fidelity`` (the fixed inputs: ``samples``, ``batch_size``, ``seed``,
``latent_size``), ``latent_size`` and ``context_length`` of the example inputs.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nasframe.architecture import Architecture
from nasframe.space import Boolean, Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.context import Context

PAIR_KINDS = ("full", "resnet", "removed")
MODES = ("search", "keep", "remove")
TEACHER_DEFAULTS = {"path": None, "seed": 0}
FIDELITY_DEFAULTS = {"samples": 8, "batch_size": 4, "seed": 0}
VAE_DEFAULTS = {"search": False, "enc_widths": [1.0, 0.75, 0.5], "dec_widths": [1.0, 0.75, 0.5],
                "enc_layers": [2, 1], "dec_layers": [3, 2, 1], "path": None, "image_size": None}


def _fail(field: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"`{field}` = {value!r}: {fix}")


def _keys(field: str, given: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise _fail(field, given, "must be a mapping")
    for key in given:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            raise _fail(f"{field}.{key}", given[key], (f"unknown key (did you mean {hint[0]!r}?); "
                                                       if hint else "unknown key; ")
                        + f"allowed: {', '.join(allowed)}")
    return dict(given)


def _int(field: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(field, value, f"must be an integer >= {low}")
    return value


def _multipliers(field: str, value: Any) -> tuple[float, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                       for v in value)):
        raise _fail(field, value, "give a list of width multipliers in (0, 1], e.g. [1.0, 0.75, 0.5]")
    if len(set(value)) != len(value):
        raise _fail(field, value, "a multiplier appears twice")
    return tuple(float(v) for v in value)


class SDUNetSpace(SearchSpace):
    """Block removal, attention dropping and narrowing of an SD U-Net (+ VAE scaling)."""

    name = "sd_unet"

    def __init__(self, preset: str = "tiny", pairs: Sequence[str] = PAIR_KINDS,
                 widths: Sequence[float] = (1.0,), mid: str = "search", innermost: str = "search",
                 vae: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None,
                 fidelity: dict[str, Any] | None = None, latent_size: int | None = None,
                 context_length: int | None = None):
        from search_spaces.sd_unet.network import PRESETS, round_width, width_quantum

        if preset not in PRESETS:
            hint = difflib.get_close_matches(str(preset), PRESETS, n=1)
            raise _fail("preset", preset, f"choose one of {', '.join(PRESETS)}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        self.preset, self.config = preset, PRESETS[preset]
        if (not isinstance(pairs, (list, tuple)) or not pairs
                or any(p not in PAIR_KINDS for p in pairs) or "full" not in pairs):
            raise _fail("pairs", pairs, f"a list drawn from {list(PAIR_KINDS)} that includes 'full'")
        self.pair_kinds = tuple(k for k in PAIR_KINDS if k in pairs)
        self.widths = _multipliers("widths", widths)
        for field, value in (("mid", mid), ("innermost", innermost)):
            if value not in MODES:
                raise _fail(field, value, f"use {', '.join(MODES)}")
        self.mid_mode, self.innermost_mode = mid, innermost
        self.vae_params = {**VAE_DEFAULTS, **_keys("vae", vae, tuple(VAE_DEFAULTS))}
        if not isinstance(self.vae_params["search"], bool):
            raise _fail("vae.search", self.vae_params["search"], "true or false")
        for key in ("enc_widths", "dec_widths"):
            self.vae_params[key] = _multipliers(f"vae.{key}", self.vae_params[key])
        for key in ("enc_layers", "dec_layers"):
            v = self.vae_params[key]
            if not isinstance(v, (list, tuple)) or not v:
                raise _fail(f"vae.{key}", v, "a list of resnets per stage, e.g. [1, 2]")
            self.vae_params[key] = tuple(_int(f"vae.{key}", x) for x in v)
        from search_spaces.sd_unet.vae import VAE_PRESETS

        vcfg = VAE_PRESETS[preset]
        for key, most in (("enc_layers", vcfg.layers_per_block), ("dec_layers", vcfg.layers_per_block + 1)):
            if max(self.vae_params[key]) > most:
                raise _fail(f"vae.{key}", list(self.vae_params[key]),
                            f"the teacher VAE has {most} resnets per stage there; use 1..{most}")
        self.teacher_params = {**TEACHER_DEFAULTS, **_keys("teacher", teacher, tuple(TEACHER_DEFAULTS))}
        _int("teacher.seed", self.teacher_params["seed"], 0)
        fid = _keys("fidelity", fidelity, (*FIDELITY_DEFAULTS, "inputs"))
        self.fidelity_params = {**FIDELITY_DEFAULTS, "inputs": None, **fid}
        for key in ("samples", "batch_size"):
            _int(f"fidelity.{key}", self.fidelity_params[key])
        _int("fidelity.seed", self.fidelity_params["seed"], 0)
        cfg = self.config
        self.latent_size = _int("latent_size", latent_size) if latent_size is not None else cfg.sample_size
        if self.latent_size % 2 ** (cfg.levels - 1):
            raise _fail("latent_size", self.latent_size,
                        f"must be a multiple of {2 ** (cfg.levels - 1)} ({cfg.levels} levels)")
        self.context_length = (_int("context_length", context_length) if context_length is not None
                               else cfg.context_length)
        self.input_shape = (cfg.in_channels, self.latent_size, self.latent_size)
        q = width_quantum(cfg)
        self._groups = cfg.stream_groups()
        self._level_widths = {g[0]: {m: round_width(cfg.block_out_channels[g[0]], m, q)
                                     for m in self.widths} for g in self._groups}
        self._decisions = self._make_decisions()
        self._teacher_state = None
        self._teacher_model = None
        self._teacher_digest = None
        self._fidelity_inputs = None
        self._combos = None
        self._vae_state = None
        self._vae_teachers: dict[str, Any] = {}
        self._levels_cache: dict[tuple[int, ...], Any] = {}
        if self.teacher_params["path"] is not None:
            from search_spaces.sd_unet.surgery import find_unet_files

            try:
                find_unet_files(self.teacher_params["path"])
            except ValueError as err:
                raise _fail("teacher.path", self.teacher_params["path"], str(err)) from None

    def __repr__(self) -> str:
        return f"SDUNetSpace(preset={self.preset!r}, decisions={len(self._decisions)})"

    # -- decisions ------------------------------------------------------------
    def _pair_choices(self, level: int) -> tuple[str, ...]:
        if self.config.attention[level]:
            return self.pair_kinds
        return tuple(k for k in self.pair_kinds if k != "resnet")

    def _make_decisions(self) -> tuple[Decision, ...]:
        cfg = self.config
        out: list[Decision] = []
        inner_possible = self.innermost_mode != "remove"
        for i in range(cfg.levels):
            if i == cfg.levels - 1 and not inner_possible:
                continue
            for j in range(cfg.down_pairs()):
                choices = self._pair_choices(i)
                if len(choices) > 1:
                    out.append(Categorical(f"down{i}_{j}", choices))
        for i in range(cfg.levels):
            if i == 0 and not inner_possible:
                continue
            for j in range(cfg.up_pairs()):
                choices = self._pair_choices(cfg.up_level(i))
                if len(choices) > 1:
                    out.append(Categorical(f"up{i}_{j}", choices))
        if self.mid_mode == "search":
            out.append(Boolean("mid"))
        if self.innermost_mode == "search":
            out.append(Boolean("innermost"))
        if len(self.widths) > 1:
            for g in self._groups:
                if g == [cfg.levels - 1] and not inner_possible:
                    continue
                out.append(Categorical(f"width{g[0]}", self.widths))
        if self.vae_params["search"]:
            vp = self.vae_params
            for name, values in (("vae_enc_width", vp["enc_widths"]), ("vae_dec_width", vp["dec_widths"]),
                                 ("vae_enc_layers", vp["enc_layers"]),
                                 ("vae_dec_layers", vp["dec_layers"])):
                if len(values) > 1:
                    out.append(Categorical(name, values))
        return tuple(out)

    def decisions(self) -> Sequence[Decision]:
        return self._decisions

    def _value(self, arch: Architecture, name: str, default: Any) -> Any:
        return arch[name] if name in arch else default

    def _default_width(self) -> float:
        return 1.0 if 1.0 in self.widths else self.widths[0]

    def plan(self, arch: Architecture):
        """The :class:`.network.UNetPlan` of ``arch``."""
        from search_spaces.sd_unet.network import UNetPlan

        cfg = self.config
        down = tuple(tuple(self._value(arch, f"down{i}_{j}", "full") for j in range(cfg.down_pairs()))
                     for i in range(cfg.levels))
        up = tuple(tuple(self._value(arch, f"up{i}_{j}", "full") for j in range(cfg.up_pairs()))
                   for i in range(cfg.levels))
        mid = {"keep": True, "remove": False}.get(self.mid_mode) if self.mid_mode != "search" else arch["mid"]
        inner = ({"keep": True, "remove": False}.get(self.innermost_mode)
                 if self.innermost_mode != "search" else arch["innermost"])
        widths = [0] * cfg.levels
        for g in self._groups:
            m = self._value(arch, f"width{g[0]}", self._default_width())
            for level in g:
                widths[level] = self._level_widths[g[0]][m]
        return UNetPlan(cfg, down, up, bool(mid), bool(inner), tuple(widths))

    def check(self, arch: Architecture) -> str | None:
        return self.plan(arch).check()

    def canonicalize(self, arch: Architecture) -> Architecture:
        """With the innermost level removed, its pairs and width are irrelevant: reset them."""
        if "innermost" not in arch or arch["innermost"]:
            return arch
        cfg = self.config
        values = dict(arch)
        last = cfg.levels - 1
        for j in range(cfg.down_pairs()):
            if f"down{last}_{j}" in values:
                values[f"down{last}_{j}"] = "full"
        for j in range(cfg.up_pairs()):
            if f"up0_{j}" in values:
                values[f"up0_{j}"] = "full"
        if f"width{last}" in values:
            values[f"width{last}"] = self._default_width()
        return Architecture(values)

    def _level_combos(self) -> list[list[dict[str, Any]]]:
        """Per level, every valid assignment of its down and up pair decisions.

        Validity factorises over levels (each level's pairs only meet the tensors
        of their own level and the levels next to it, whose widths and groups the
        teacher fixes), so a uniform draw per level is a uniform valid draw."""
        if self._combos is None:
            import itertools

            cfg = self.config
            dmap = self.decision_map()
            base = {d.name: ("full" if isinstance(d, Categorical) and "full" in d.choices
                             else d.value_at(0)) for d in self._decisions}
            for key in ("mid", "innermost"):
                if key in base:
                    base[key] = True
            self._combos = []
            for level in range(cfg.levels):
                names = [n for n in ([f"down{level}_{j}" for j in range(cfg.down_pairs())]
                                     + [f"up{cfg.levels - 1 - level}_{j}" for j in range(cfg.up_pairs())])
                         if n in dmap]
                combos = []
                for values in itertools.product(*(dmap[n].values() for n in names)):
                    trial = Architecture({**base, **dict(zip(names, values))})
                    if self.plan(trial).check() is None:
                        combos.append(dict(zip(names, values)))
                self._combos.append(combos)
        return self._combos

    def sample(self, rng, max_tries: int = 1000) -> Architecture:
        """Each level's pairs drawn uniformly from its valid assignments, the other
        decisions uniformly; canonicalised."""
        combos = self._level_combos()
        reason = None
        for _ in range(max_tries):
            values = {d.name: d.sample(rng) for d in self._decisions}
            for options in combos:
                if options:
                    values.update(options[int(rng.integers(len(options)))])
            arch = self.canonicalize(Architecture(values))
            reason = self.validate(arch)
            if reason is None:
                return arch
        raise RuntimeError(f"search space 'sd_unet': no valid sample in {max_tries} tries "
                           f"(last reason: {reason})")

    def neighbours(self, arch: Architecture, rng=None) -> list[Architecture]:
        """One-decision changes, plus the coupled moves validity needs: a level's
        pairs reassigned to any valid assignment within two changes (e.g. remove a
        down pair and the matching up pair together)."""
        out = {a.id: a for a in super().neighbours(arch, rng)}
        arch = self.canonicalize(arch)
        for options in self._level_combos():
            if not options:
                continue
            names = list(options[0])
            current = [arch[n] for n in names]
            for values in options:
                diff = sum(values[n] != c for n, c in zip(names, current))
                if diff == 2:
                    a = self.canonicalize(Architecture({**arch, **values}))
                    if a.id != arch.id and a.id not in out and self.validate(a) is None:
                        out[a.id] = a
        return list(out.values())

    def enumerate(self, limit: int | None = None):
        seen: set[str] = set()
        for arch in super().enumerate():
            arch = self.canonicalize(arch)
            if arch.id in seen:
                continue
            seen.add(arch.id)
            yield arch
            if limit is not None and len(seen) >= limit:
                return

    # -- references -------------------------------------------------------------
    def _reference(self, down, up, mid: bool, innermost: bool) -> Architecture | None:
        """The architecture with these pairs at full width (and the largest VAE the
        space offers), or None when this space's fixed choices exclude it."""
        from search_spaces.sd_unet.network import UNetPlan

        cfg = self.config
        want = UNetPlan(cfg, tuple(tuple(down(i, j) for j in range(cfg.down_pairs()))
                                   for i in range(cfg.levels)),
                        tuple(tuple(up(i, j) for j in range(cfg.up_pairs()))
                              for i in range(cfg.levels)), mid, innermost)
        vp = self.vae_params
        values: dict[str, Any] = {}
        for d in self._decisions:
            n = d.name
            if n.startswith("down"):
                i, j = map(int, n[4:].split("_"))
                values[n] = want.down[i][j]
            elif n.startswith("up"):
                i, j = map(int, n[2:].split("_"))
                values[n] = want.up[i][j]
            elif n in ("mid", "innermost"):
                values[n] = mid if n == "mid" else innermost
            elif n.startswith("width"):
                values[n] = 1.0
            else:                                   # vae_enc_width ... vae_dec_layers
                values[n] = max(vp[{"vae_enc_width": "enc_widths", "vae_dec_width": "dec_widths",
                                    "vae_enc_layers": "enc_layers",
                                    "vae_dec_layers": "dec_layers"}[n]])
        arch = self.canonicalize(Architecture(values))
        if self.validate(arch) is not None or _relevant(self.plan(arch)) != _relevant(want):
            return None
        return arch

    def reference_architectures(self) -> dict[str, Architecture]:
        """``sd15`` (the teacher), ``bk_sdm_base``, ``bk_sdm_small``, ``bk_sdm_tiny``
        (BK-SDM, Kim et al. 2023) and ``nanosd`` (NanoSD's surgery: the innermost
        stage and the mid block removed, every other pair kept), those this space holds."""
        last_up = self.config.up_pairs() - 1

        def full(i, j):
            return "full"

        def bk_down(i, j):
            return "full" if j == 0 else "removed"

        def bk_up(i, j):
            return "removed" if 0 < j < last_up else "full"

        refs = {"sd15": self._reference(full, full, True, True),
                "bk_sdm_base": self._reference(bk_down, bk_up, True, True),
                "bk_sdm_small": self._reference(bk_down, bk_up, False, True),
                "bk_sdm_tiny": self._reference(bk_down, bk_up, False, False),
                "nanosd": self._reference(full, full, False, False)}
        return {k: v for k, v in refs.items() if v is not None}

    # -- teacher ------------------------------------------------------------------
    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher's weights (:class:`.network.SDUNet` names): loaded from
        ``teacher.path``, else a random initialisation from ``teacher.seed``."""
        if self._teacher_state is None:
            import torch

            from search_spaces.sd_unet.network import SDUNet, UNetPlan
            from search_spaces.sd_unet.surgery import load_teacher

            path = self.teacher_params["path"]
            if path is not None:
                try:
                    self._teacher_state = load_teacher(path, self.config)
                except ValueError as err:
                    raise _fail("teacher.path", path, str(err)) from None
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.teacher_params["seed"])
                    model = SDUNet(UNetPlan.teacher(self.config))
                self._teacher_state = {k: v.detach() for k, v in model.state_dict().items()}
        return self._teacher_state

    @property
    def has_teacher(self) -> bool:
        return self._teacher_state is not None

    def teacher(self, part: str | None = None) -> torch.nn.Module:
        """The full teacher U-Net, or VAE ``part`` (eval mode; built once, do not modify)."""
        if part in ("vae_encoder", "vae_decoder"):
            if part not in self._vae_teachers:
                self.vae_teacher_state()
                model = self._vae_part(Architecture({}), part, teacher=True)
                self._vae_teachers[part] = model.eval().requires_grad_(False)
            return self._vae_teachers[part]
        if part is not None:
            raise ValueError(f"sd_unet has no teacher for part {part!r} (fidelity works on the "
                             "U-Net, vae_encoder and vae_decoder)")
        if self._teacher_model is None:
            from search_spaces.sd_unet.network import SDUNet, UNetPlan

            import torch

            state = self.teacher_state()
            with torch.device("meta"):                # share the state's tensors: no copy
                model = SDUNet(UNetPlan.teacher(self.config))
            model.load_state_dict(state, assign=True)
            self._teacher_model = model.eval().requires_grad_(False)
        return self._teacher_model

    def teacher_digest(self) -> str:
        if self._teacher_digest is None:
            from nasframe.distill import module_digest

            self._teacher_digest = module_digest(self.teacher_state())
        return self._teacher_digest

    # -- fidelity protocol (objective ``fidelity``) -----------------------------------
    def fidelity_inputs(self, part: str | None = None) -> list[tuple[torch.Tensor, ...]]:
        """The fixed inputs fidelity is measured on: batches of ``(sample, timestep,
        encoder_hidden_states)``. From ``fidelity.inputs`` (a .safetensors file with
        those three tensors) or drawn from ``fidelity.seed``: latents ~ N(0, 1),
        timesteps evenly spread over [0, 1000), text embeddings ~ N(0, 1)."""
        if part is not None:
            return self._vae_fidelity_inputs(part)
        if self._fidelity_inputs is None:
            import torch

            fp = self.fidelity_params
            if fp["inputs"] is not None:
                sample, t, ehs = self._load_inputs(fp["inputs"])
            else:
                from search_spaces.sd_unet.align import synthetic_batch

                n = fp["samples"]
                sample, _, ehs = synthetic_batch(self.config, n, self.latent_size,
                                                 self.context_length, 10_000_019 + fp["seed"])
                t = torch.linspace(0, 999, n).round().long()
            b = fp["batch_size"]
            self._fidelity_inputs = [(sample[i:i + b], t[i:i + b], ehs[i:i + b])
                                     for i in range(0, sample.shape[0], b)]
        return self._fidelity_inputs

    def _vae_fidelity_inputs(self, part: str) -> list[tuple[torch.Tensor, ...]]:
        """VAE decoder: latents ~ N(0, 1) / scaling_factor (the magnitude of SD's
        latents); encoder: images uniform in [-1, 1]; ``fidelity.samples`` of them."""
        import torch

        from search_spaces.sd_unet.vae import vae_example_inputs

        fp = self.fidelity_params
        side = self.vae_params["image_size"] or self.latent_size * self.vae_config.downsampling
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000_003 + fp["seed"])
            (x,) = vae_example_inputs(self.vae_config, part, None, fp["samples"], side)
        if part == "vae_decoder":
            x = x / self.vae_config.scaling_factor
        b = fp["batch_size"]
        return [(x[i:i + b],) for i in range(0, x.shape[0], b)]

    def _load_inputs(self, path: str):
        from pathlib import Path

        from safetensors.torch import load_file

        where = "fidelity.inputs"
        if not Path(path).is_file():
            raise _fail(where, path, "no such file; give a .safetensors file with tensors "
                        "`sample`, `timestep` and `encoder_hidden_states`")
        data = load_file(path)
        missing = [k for k in ("sample", "timestep", "encoder_hidden_states") if k not in data]
        if missing:
            raise _fail(where, path, f"lacks tensor(s) {', '.join(missing)}")
        sample, t, ehs = data["sample"], data["timestep"].long(), data["encoder_hidden_states"]
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise _fail(where, path, f"`sample` has shape {tuple(sample.shape)}; expected "
                        f"(N, {cfg.in_channels}, H, W)")
        if ehs.ndim != 3 or ehs.shape[-1] != cfg.cross_attention_dim or ehs.shape[0] != sample.shape[0]:
            raise _fail(where, path, f"`encoder_hidden_states` has shape {tuple(ehs.shape)}; "
                        f"expected ({sample.shape[0]}, tokens, {cfg.cross_attention_dim})")
        if t.ndim != 1 or t.shape[0] != sample.shape[0]:
            raise _fail(where, path, f"`timestep` has shape {tuple(t.shape)}; expected ({sample.shape[0]},)")
        return sample.float(), t, ehs.float()

    def feature_channels(self, arch: Architecture, part: str | None = None) -> dict[str, Any]:
        """For each stage feature the candidate returns (``down{i}``, ``mid``,
        ``up{i}``), the teacher channels it corresponds to (None: all). The VAE
        parts are compared on their output only (empty)."""
        if part is not None:
            return {}
        plan = self.plan(arch)
        lv = self.level_indices(plan)
        out: dict[str, Any] = {f"down{i}": lv[i] for i in plan.down_stages()}
        if plan.mid and plan.innermost:   # without the innermost level, mid sits a level higher
            out["mid"] = lv[plan.levels - 1]
        out.update({f"up{i}": lv[self.config.up_level(i)] for i in plan.up_stages()})
        return out

    def align(self, model: torch.nn.Module, arch: Architecture, ctx: Context, *, steps: int,
              lr: float = 1e-3, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
        """Distil every changed pair of ``model`` (cached per pair variant); see :mod:`.align`."""
        from search_spaces.sd_unet.align import align

        return align(model, self.teacher(), self.teacher_digest(),
                     self.level_indices(self.plan(arch)), ctx, steps=steps, lr=lr,
                     batch_size=batch_size, seed=seed, latent=self.latent_size,
                     context=self.context_length)

    def prepare(self, ctx: Context) -> None:
        """Load the teacher when ``teacher.path`` is given (else it is made on first use)."""
        if self.teacher_params["path"] is not None:
            self.teacher_state()
            ctx.log(f"[sd_unet] teacher loaded from {self.teacher_params['path']}")

    def level_indices(self, plan) -> list:
        """The teacher channels each level keeps under ``plan`` (None: all)."""
        key = tuple(plan.widths)
        if key not in self._levels_cache:
            from search_spaces.sd_unet.surgery import level_indices

            self._levels_cache[key] = level_indices(self.teacher_state(), plan)
        return self._levels_cache[key]

    # -- the VAE and the pipeline (model parts) ------------------------------------------
    def parts(self) -> tuple[str, ...]:
        """``vae_encoder``, ``vae_decoder`` (NanoSD's VAE scaling) and ``pipeline``
        (one U-Net step, then the VAE decoder: the cost of a one-step generator)."""
        return ("vae_encoder", "vae_decoder", "pipeline")

    @property
    def vae_config(self):
        from search_spaces.sd_unet.vae import VAE_PRESETS

        return VAE_PRESETS[self.preset]

    def vae_choice(self, arch: Architecture) -> dict[str, Any]:
        """``enc_width``, ``dec_width``, ``enc_layers``, ``dec_layers`` of ``arch``'s VAE."""
        cfg, vp = self.vae_config, self.vae_params
        full = {"enc_width": 1.0, "dec_width": 1.0, "enc_layers": cfg.layers_per_block,
                "dec_layers": cfg.layers_per_block + 1}
        if not vp["search"]:
            return full
        return {"enc_width": self._value(arch, "vae_enc_width", vp["enc_widths"][0]),
                "dec_width": self._value(arch, "vae_dec_width", vp["dec_widths"][0]),
                "enc_layers": self._value(arch, "vae_enc_layers", vp["enc_layers"][0]),
                "dec_layers": self._value(arch, "vae_dec_layers", vp["dec_layers"][0])}

    def vae_teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher VAE (``AutoencoderKL`` names): from ``vae.path``, else from a
        pipeline folder given as ``teacher.path`` (its ``vae/``), else a random
        initialisation from ``teacher.seed``."""
        if self._vae_state is None:
            from pathlib import Path

            import torch

            from search_spaces.sd_unet.vae import VAEDecoder, VAEEncoder, load_vae_teacher

            path, field = self.vae_params["path"], "vae.path"
            tp = self.teacher_params["path"]
            if path is None and tp is not None and (Path(tp) / "vae").is_dir():
                path, field = tp, "teacher.path"
            if path is not None:
                try:
                    self._vae_state = load_vae_teacher(path, self.vae_config)
                except ValueError as err:
                    raise _fail(field, path, str(err)) from None
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.teacher_params["seed"] + 1)
                    state = {**VAEEncoder(self.vae_config).state_dict(),
                             **VAEDecoder(self.vae_config).state_dict()}
                self._vae_state = {k: v.detach() for k, v in state.items()}
        return self._vae_state

    def _vae_part(self, arch: Architecture, part: str, teacher: bool = False):
        from search_spaces.sd_unet.vae import build_vae_part, inherit_vae

        c = self.vae_choice(arch)
        which = "enc" if part == "vae_encoder" else "dec"
        width, layers = (1.0, None) if teacher else (c[f"{which}_width"], c[f"{which}_layers"])
        model = build_vae_part(self.vae_config, part, width, layers)
        if self._vae_state is not None:
            inherit_vae(model, self._vae_state)
        return model

    def build_part(self, arch: Architecture, part: str) -> torch.nn.Module:
        if part in ("vae_encoder", "vae_decoder"):
            return self._vae_part(arch, part)
        if part == "pipeline":
            from search_spaces.sd_unet.network import OneStepPipeline

            return OneStepPipeline(self.build(arch), self._vae_part(arch, "vae_decoder"),
                                   self.vae_config.scaling_factor)
        return super().build_part(arch, part)

    def part_example_inputs(self, arch: Architecture, part: str,
                            input_shape: Sequence[int] | None = None,
                            batch_size: int = 1) -> tuple[Any, ...]:
        """VAE encoder: images of side ``vae.image_size`` (default: latent size x 8);
        VAE decoder: latents; pipeline: the U-Net's inputs."""
        if part == "pipeline":
            return self.example_inputs(arch, input_shape, batch_size)
        if part in ("vae_encoder", "vae_decoder"):
            from search_spaces.sd_unet.vae import vae_example_inputs

            side = self.vae_params["image_size"] or self.latent_size * self.vae_config.downsampling
            return vae_example_inputs(self.vae_config, part, input_shape, batch_size, side)
        return super().part_example_inputs(arch, part, input_shape, batch_size)

    # -- models -------------------------------------------------------------------
    def build(self, arch: Architecture) -> torch.nn.Module:
        """The candidate U-Net. Once a teacher exists (loaded, or made by the
        ``fidelity`` objective) it inherits the teacher's weights; before, fresh."""
        from search_spaces.sd_unet.network import SDUNet
        from search_spaces.sd_unet.surgery import inherit

        plan = self.plan(arch)
        model = SDUNet(plan)
        if self.has_teacher:
            inherit(model, self.teacher_state(), self.level_indices(plan))
        return model

    def example_inputs(self, arch: Architecture, input_shape: Sequence[int] | None = None,
                       batch_size: int = 1) -> tuple[Any, ...]:
        """``(sample, timestep, encoder_hidden_states)``: a latent of ``input_shape``
        (default ``[batch, in_channels, latent_size, latent_size]``), timestep 500,
        and ``context_length`` tokens of ``cross_attention_dim``."""
        import torch

        shape = tuple(input_shape) if input_shape else (batch_size, *self.input_shape)
        cfg = self.config
        return (torch.randn(*shape), torch.full((shape[0],), 500, dtype=torch.long),
                torch.randn(shape[0], self.context_length, cfg.cross_attention_dim))

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """Nodes: ``conv_in``, each kept resnet and attention (``kind`` resnet /
        attention), samplers, ``mid``, ``conv_out``; ``channels``, ``resolution``
        (latent side); skip edges carry ``skip=True``."""
        import networkx as nx

        plan = self.plan(arch)
        cfg, w = plan.config, plan.widths
        side = self.latent_size
        g = nx.DiGraph()
        g.add_node("conv_in", kind="conv", channels=w[0], resolution=side)
        prev, skips = "conv_in", ["conv_in"]

        def chain(node: str, kind: str, channels: int, resolution: int) -> None:
            nonlocal prev
            g.add_node(node, kind=kind, channels=channels, resolution=resolution)
            g.add_edge(prev, node)
            prev = node

        for where in ("down", "up"):
            for i, level in plan.stages(where):
                res = side // 2 ** level
                for j, attention in plan.kept(where, i):
                    chain(f"{where}{i}_{j}.resnet", "resnet", w[level], res)
                    if where == "up":
                        g.add_edge(skips.pop(), prev, skip=True)
                    if attention:
                        chain(f"{where}{i}_{j}.attention", "attention", w[level], res)
                    if where == "down":
                        skips.append(prev)
                if where == "down" and i < plan.levels - 1:
                    chain(f"down{i}.downsample", "downsample", w[level], res // 2)
                    skips.append(prev)
                elif where == "up" and level > 0:
                    chain(f"up{i}.upsample", "upsample", w[level], res * 2)
            if where == "down" and plan.mid:
                lvl = plan.levels - 1
                chain("mid", "mid", w[lvl], side // 2 ** lvl)
        g.add_node("conv_out", kind="conv", channels=cfg.out_channels, resolution=side)
        g.add_edge(prev, "conv_out")
        return g



def _relevant(plan) -> tuple:
    """What of a plan builds the network (a removed innermost level's pairs do not)."""
    return (tuple(plan.down[i] for i in plan.down_stages()),
            tuple(plan.up[i] for i in plan.up_stages()), plan.mid, plan.innermost, plan.widths)
