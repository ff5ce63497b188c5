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
``.safetensors`` file; else a randomly initialised teacher from ``seed``;
``train: {steps: N}`` trains it on photos first, see :mod:`.pretrain`),
``fidelity`` (the fixed inputs: ``samples``, ``batch_size``, ``seed``,
``latent_size``), ``latent_size`` and ``context_length`` of the example inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, field_validator

from nasframe.architecture import Architecture
from nasframe.capabilities import BlockAlignment, BlockKinds, ModelParts, Teacher
from nasframe.errors import InvalidParams
from nasframe.params import Bool, Field, Float, Int, ParamError, Params
from nasframe.space import Boolean, Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.context import Context

PAIR_KINDS = ("full", "resnet", "surrogate", "removed")
DEFAULT_PAIRS = ("full", "resnet", "removed")
PairKind = Literal["full", "resnet", "surrogate", "removed"]
Mode = Literal["search", "keep", "remove"]


def _distinct_nonempty(values: tuple) -> tuple:
    if not values:
        raise ValueError("give at least one value")
    if len(set(values)) != len(values):
        raise ValueError("a value appears twice; list each once")
    return values


#: width multipliers in (0, 1], distinct
Multipliers = Annotated[tuple[Annotated[Float, Field(gt=0, le=1)], ...],
                        AfterValidator(_distinct_nonempty)]
#: resnets per stage
Layers = Annotated[tuple[Annotated[Int, Field(ge=1, le=64)], ...], AfterValidator(_distinct_nonempty)]


class VAEParams(Params):
    search: Bool = False
    """Search the VAE too (width and resnets per stage of encoder and decoder)."""
    enc_widths: Multipliers = (1.0, 0.75, 0.5)
    """Encoder width multipliers to choose from."""
    dec_widths: Multipliers = (1.0, 0.75, 0.5)
    """Decoder width multipliers to choose from."""
    enc_layers: Layers = (2, 1)
    """Encoder resnets per stage to choose from."""
    dec_layers: Layers = (3, 2, 1)
    """Decoder resnets per stage to choose from."""
    path: str | None = Field(None, min_length=1)
    """The teacher VAE: a diffusers AutoencoderKL folder or file (default: teacher.path's vae/, else random)."""
    image_size: Int | None = Field(None, ge=8, le=8192)
    """Side of the VAE encoder's example images (default: latent size x 8)."""


class TrainParams(Params):
    steps: Int = Field(0, ge=0, le=10_000_000)
    """U-Net denoising steps on photo latents (0: no training; the teacher is random or path's)."""
    vae_steps: Int = Field(150, ge=0, le=10_000_000)
    """VAE reconstruction steps on photo crops."""
    batch_size: Int = Field(8, ge=1, le=4096)
    """Crops (VAE) and latents (U-Net) per step."""
    lr: Float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the U-Net."""
    vae_lr: Float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the VAE."""
    kl_weight: Float = Field(1e-4, ge=0, le=10)
    """Weight of the VAE's KL term (per latent element) against the L1 reconstruction."""
    vae_crop: Int = Field(32, ge=8, le=8192)
    """Side of the VAE's training crops (pixels)."""
    latent_size: Int = Field(8, ge=1, le=1024)
    """Side of the U-Net's training latent crops."""
    pool: Int = Field(256, ge=1, le=1_000_000)
    """Encoded photo crops the U-Net trains on."""
    expand_steps: Int = Field(100, ge=0, le=10_000_000)
    """16-channel presets: re-alignment steps of the expanded U-Net (see sd_unet/expand.py)."""
    expand_vae_steps: Int = Field(50, ge=0, le=10_000_000)
    """16-channel presets: re-alignment steps of the expanded VAE."""


class TeacherParams(Params):
    path: str | None = Field(None, min_length=1)
    """A diffusers pipeline folder, a U-Net folder or a .safetensors file (default: a random teacher)."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the random or trained teacher (default: the experiment's seed)."""
    train: TrainParams = TrainParams()
    """Train the teacher (from path's weights, else from scratch) on scikit-image photos: steps > 0."""


class FidelityInputParams(Params):
    samples: Int = Field(8, ge=1, le=100_000)
    """Fixed inputs fidelity is measured on."""
    batch_size: Int = Field(4, ge=1, le=4096)
    """Inputs per forward pass."""
    seed: Int | None = Field(None, ge=0)
    """Seed of the synthetic inputs (default: the experiment's seed)."""
    inputs: str | None = Field(None, min_length=1)
    """A .safetensors file with sample, timestep and encoder_hidden_states (default: synthetic)."""


class SDUNetSpace(SearchSpace, Teacher, BlockAlignment, ModelParts, BlockKinds):
    """Block removal, attention dropping and narrowing of an SD U-Net (+ VAE scaling)."""

    name = "sd_unet"
    dependencies = ("diffusers", "safetensors")
    install_hint = "pip install 'nasframe[diffusion]'"
    small_params = {"preset": "tiny", "widths": [1.0, 0.5], "latent_size": 8,
                    "fidelity": {"samples": 2, "batch_size": 2}}

    class Params(Params):
        preset: Literal["sd15", "latent16", "tiny", "tiny16"] = "tiny"
        """sd15 (SD 1.5, 860 M), latent16 (a 16-channel latent), tiny (CPU examples and tests), tiny16 (tiny on a 16-channel latent)."""
        pairs: tuple[PairKind, ...] = DEFAULT_PAIRS
        """Choices per (resnet, attention) pair: full, resnet (attention dropped), surrogate (a distilled depthwise-separable block), removed; must include full."""
        surrogate_steps: Int = Field(200, ge=0, le=10_000_000)
        """Distillation steps of each surrogate pair (trained once per pair and width, cached)."""
        widths: Multipliers = (1.0,)
        """Width multipliers per resolution level."""
        mid: Mode = "search"
        """The mid block: search (a decision), keep or remove."""
        innermost: Mode = "search"
        """The innermost level: search, keep or remove."""
        vae: VAEParams = VAEParams()
        """The VAE: search, enc_widths, dec_widths, enc_layers, dec_layers, path, image_size."""
        teacher: TeacherParams = TeacherParams()
        """The teacher: path (local weights) or seed (random)."""
        fidelity: FidelityInputParams = FidelityInputParams()
        """The fixed inputs of fidelity: samples, batch_size, seed, inputs."""
        latent_size: Int | None = Field(None, ge=1, le=1024)
        """Side of the example latents (default: the preset's sample size)."""
        context_length: Int | None = Field(None, ge=1, le=4096)
        """Text tokens of the example inputs (default: the preset's)."""

        @field_validator("pairs")
        @classmethod
        def _pairs_with_full(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            if "full" not in v or len(set(v)) != len(v):
                raise ValueError(f"a list drawn from {list(PAIR_KINDS)}, each once, that includes 'full'")
            return v

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        from nasframe_search_spaces.sd_unet.network import PRESETS, round_width, width_quantum
        from nasframe_search_spaces.sd_unet.teacher import SDTeacher
        from nasframe_search_spaces.sd_unet.vae import VAE_PRESETS

        p = self.params
        self.preset, self.config = p.preset, PRESETS[p.preset]
        self.pair_kinds = tuple(k for k in PAIR_KINDS if k in p.pairs)
        self.widths = tuple(float(w) for w in p.widths)
        self.mid_mode, self.innermost_mode = p.mid, p.innermost
        self.vae_params = p.vae.model_dump()
        vcfg = VAE_PRESETS[p.preset]
        for key, most in (("enc_layers", vcfg.layers_per_block), ("dec_layers", vcfg.layers_per_block + 1)):
            if max(self.vae_params[key]) > most:
                raise ParamError(f"vae.{key}", f"{list(self.vae_params[key])}: the teacher VAE has "
                                 f"{most} resnets per stage there; use 1..{most}")
        cfg = self.config
        self.latent_size = p.latent_size if p.latent_size is not None else cfg.sample_size
        if self.latent_size % 2 ** (cfg.levels - 1):
            raise ParamError("latent_size", f"{self.latent_size} must be a multiple of "
                             f"{2 ** (cfg.levels - 1)} ({cfg.levels} levels)")
        self.context_length = p.context_length if p.context_length is not None else cfg.context_length
        self.input_shape = (cfg.in_channels, self.latent_size, self.latent_size)
        q = width_quantum(cfg)
        self._groups = cfg.stream_groups()
        self._level_widths = {g[0]: {m: round_width(cfg.block_out_channels[g[0]], m, q)
                                     for m in self.widths} for g in self._groups}
        self._decisions = self._make_decisions()
        self._combos = None
        for field, path in (("teacher.path", p.teacher.path), ("vae.path", p.vae.path)):
            if path is not None and not Path(path).expanduser().exists():
                raise ParamError(field, f"{path!r} does not exist; give a diffusers folder or a "
                                 ".safetensors file on this machine")
        if p.teacher.path is not None:
            from nasframe_search_spaces.sd_unet.surgery import find_unet_files

            try:
                find_unet_files(p.teacher.path)
            except ValueError as err:
                raise ParamError("teacher.path", f"{p.teacher.path!r}: {err}") from None
        if p.fidelity.inputs is not None and not Path(p.fidelity.inputs).expanduser().is_file():
            raise ParamError("fidelity.inputs", f"no file at {p.fidelity.inputs!r}; give a "
                             ".safetensors file with sample, timestep and encoder_hidden_states")
        self._teacher = SDTeacher(cfg, vcfg, path=p.teacher.path, vae_path=p.vae.path,
                                  seed=p.teacher.seed, fidelity=p.fidelity.model_dump(),
                                  latent_size=self.latent_size,
                                  context_length=self.context_length,
                                  image_size=p.vae.image_size,
                                  train=p.teacher.train.model_dump())

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
        from nasframe_search_spaces.sd_unet.network import UNetPlan

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
        from nasframe_search_spaces.sd_unet.network import UNetPlan

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

    # -- the teacher (capabilities Teacher and BlockAlignment; see .teacher) ----------
    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher's weights (:class:`.network.SDUNet` names)."""
        return self._call_teacher(self._teacher.state)

    @property
    def has_teacher(self) -> bool:
        return self._teacher.made

    def teacher(self, part: str | None = None) -> torch.nn.Module:
        """The full teacher U-Net, or VAE ``part`` (eval mode; built once, do not modify)."""
        return self._call_teacher(self._teacher.model, part)

    def trained_teacher(self) -> dict[str, Any] | None:
        """With ``teacher.train``: the trained teacher (``unet``, ``vae`` states, the null
        embedding ``ehs``, the latent ``pool``, ``latent_scale``, the training ``report``)."""
        return self._call_teacher(self._teacher.trained) if self._teacher.is_trained else None

    def teacher_digest(self) -> str:
        return self._teacher.digest()

    def fidelity_inputs(self, part: str | None = None) -> list[tuple[torch.Tensor, ...]]:
        """Fixed batches of ``(sample, timestep, encoder_hidden_states)`` (see
        :meth:`.teacher.SDTeacher.inputs`), or of VAE inputs for ``part``."""
        return self._call_teacher(self._teacher.inputs, part)

    def vae_teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher VAE's weights (``AutoencoderKL`` names)."""
        return self._call_teacher(self._teacher.vae_state)

    def _call_teacher(self, fn, *args):
        from nasframe_search_spaces.sd_unet.teacher import TeacherError

        try:
            return fn(*args)
        except TeacherError as err:
            raise InvalidParams(str(err)) from None

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
        from nasframe_search_spaces.sd_unet.align import align

        batches = None
        if self._teacher.is_trained:               # noised photo latents, the null embedding
            def batches(step: int):
                return self._teacher.training_batch(batch_size, self.latent_size,
                                                    seed * 100_003 + step + 1)
        return align(model, self.teacher(), self.teacher_digest(),
                     self.level_indices(self.plan(arch)), ctx, steps=steps, lr=lr,
                     batch_size=batch_size, seed=seed, latent=self.latent_size,
                     context=self.context_length, batches=batches,
                     surrogate_steps=self.params.surrogate_steps)

    def prepare(self, ctx: Context, needs=frozenset()) -> None:
        """With :class:`~nasframe.capabilities.Teacher` in ``needs``: make or load the
        teacher (from then on every candidate inherits its weights). Nothing otherwise:
        counting parameters or MACs needs no teacher."""
        self._teacher.use_seed(ctx.seed)
        self._teacher.attach(ctx)
        if Teacher in needs or BlockAlignment in needs:
            self.teacher_state()
            if self.params.teacher.path is not None:
                ctx.log(f"[sd_unet] teacher loaded from {self.params.teacher.path}")

    def level_indices(self, plan) -> list:
        """The teacher channels each level keeps under ``plan`` (None: all)."""
        return self._call_teacher(self._teacher.level_indices, plan)

    def block_kinds(self) -> dict[str, str]:
        return {"resnet": "a ResnetBlock2D", "surrogate": "a depthwise-separable residual block distilled to stand in for a pair", "attention": "a Transformer2DModel (self and cross attention)",
                "conv": "conv_in or conv_out", "downsample": "a Downsample2D",
                "upsample": "an Upsample2D", "mid": "the mid block"}

    # -- the VAE and the pipeline (model parts) ------------------------------------------
    def parts(self) -> tuple[str, ...]:
        """``vae_encoder``, ``vae_decoder`` (NanoSD's VAE scaling) and ``pipeline``
        (one U-Net step, then the VAE decoder: the cost of a one-step generator)."""
        return ("vae_encoder", "vae_decoder", "pipeline")

    @property
    def vae_config(self):
        from nasframe_search_spaces.sd_unet.vae import VAE_PRESETS

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

    def _vae_part(self, arch: Architecture, part: str):
        """The candidate's VAE part; it inherits the teacher VAE's weights once that exists."""
        from nasframe_search_spaces.sd_unet.vae import build_vae_part, inherit_vae

        c = self.vae_choice(arch)
        which = "enc" if part == "vae_encoder" else "dec"
        model = build_vae_part(self.vae_config, part, c[f"{which}_width"], c[f"{which}_layers"])
        if self._teacher.vae_made:
            inherit_vae(model, self.vae_teacher_state())
        return model

    def build_part(self, arch: Architecture, part: str) -> torch.nn.Module:
        if part in ("vae_encoder", "vae_decoder"):
            return self._vae_part(arch, part)
        if part == "pipeline":
            from nasframe_search_spaces.sd_unet.network import OneStepPipeline

            return OneStepPipeline(self.build(arch), self._vae_part(arch, "vae_decoder"),
                                   self.vae_config.scaling_factor)
        raise ValueError(f"search space 'sd_unet' has no part {part!r}; its parts: "
                         f"{', '.join(self.parts())}")

    def part_example_inputs(self, arch: Architecture, part: str,
                            input_shape: Sequence[int] | None = None,
                            batch_size: int = 1) -> tuple[Any, ...]:
        """VAE encoder: images of side ``vae.image_size`` (default: latent size x 8);
        VAE decoder: latents; pipeline: the U-Net's inputs."""
        if part == "pipeline":
            return self.example_inputs(arch, input_shape, batch_size)
        if part in ("vae_encoder", "vae_decoder"):
            from nasframe_search_spaces.sd_unet.vae import vae_example_inputs

            side = self.vae_params["image_size"] or self.latent_size * self.vae_config.downsampling
            return vae_example_inputs(self.vae_config, part, input_shape, batch_size, side)
        raise ValueError(f"search space 'sd_unet' has no part {part!r}; its parts: "
                         f"{', '.join(self.parts())}")

    # -- models -------------------------------------------------------------------
    def build(self, arch: Architecture) -> torch.nn.Module:
        """The candidate U-Net. Once a teacher exists (loaded, or made by the
        ``fidelity`` objective) it inherits the teacher's weights; before, fresh."""
        from nasframe_search_spaces.sd_unet.network import SDUNet
        from nasframe_search_spaces.sd_unet.surgery import inherit

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
                    if (plan.down if where == "down" else plan.up)[i][j] == "surrogate":
                        chain(f"{where}{i}_{j}.surrogate", "surrogate", w[level], res)
                    else:
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
