"""The teacher of an ``sd_unet`` space: its weights, the fixed inputs fidelity runs on,
and the channel subsets narrowed candidates keep.

:class:`SDTeacher` holds what every candidate is compared with and inherits
from: the U-Net teacher (loaded from ``teacher.path`` or randomly initialised
from the seed, or trained on photos by :mod:`.pretrain` with ``teacher.train``),
the VAE teacher (``vae.path``, the pipeline folder's ``vae/``, the trained one,
or random), the fixed fidelity inputs (``fidelity.inputs``; noised latents of
held-out photos for a trained teacher; else synthetic), and
the per-level channel subsets of each width (cached). Everything is made on
first use and shared (the teacher module views the state's tensors, no copy).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nasframe_search_spaces.sd_unet.network import UNetConfig, UNetPlan
    from nasframe_search_spaces.sd_unet.vae import VAEConfig

VAE_PARTS = ("vae_encoder", "vae_decoder")


class TeacherError(ValueError):
    """A teacher file or input file that cannot be used; ``field`` names the param."""

    def __init__(self, field: str, value: Any, message: str):
        self.field = field
        super().__init__(f"`{field}` = {value!r}: {message}")


class SDTeacher:
    """Teacher weights, fixed inputs and channel subsets of one ``sd_unet`` space."""

    def __init__(self, config: UNetConfig, vae_config: VAEConfig, *, path: str | None,
                 vae_path: str | None, seed: int | None, fidelity: dict[str, Any],
                 latent_size: int, context_length: int, image_size: int | None,
                 train: dict[str, Any] | None = None):
        self.config, self.vae_config = config, vae_config
        self.train = dict(train) if train and train.get("steps") else None
        self.ctx = None
        self._trained: dict[str, Any] | None = None
        self.path, self.vae_path = path, vae_path
        self.own_seed = seed
        self.fidelity = dict(fidelity)
        self.latent_size, self.context_length = latent_size, context_length
        self.image_size = image_size
        self.seed = 0 if seed is None else seed
        self._state: dict[str, torch.Tensor] | None = None
        self._model: torch.nn.Module | None = None
        self._digest: str | None = None
        self._inputs: list[tuple[torch.Tensor, ...]] | None = None
        self._vae_state: dict[str, torch.Tensor] | None = None
        self._vae_models: dict[str, torch.nn.Module] = {}
        self._levels: dict[tuple[int, ...], list] = {}

    def use_seed(self, experiment_seed: int) -> None:
        """The experiment's seed, used unless ``teacher.seed`` / ``fidelity.seed`` are set
        (call before anything is made)."""
        if self.own_seed is None:
            self.seed = experiment_seed

    def attach(self, ctx) -> None:
        """The run context: where a trained teacher is cached."""
        self.ctx = ctx

    # -- the trained teacher ------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.train is not None

    def trained(self) -> dict[str, Any]:
        """The trained teacher (see :func:`.pretrain.trained_teacher`): trained once
        per content hash, then loaded from the run's cache."""
        if self._trained is None:
            import tempfile

            from nasframe.context import Context
            from nasframe_search_spaces.sd_unet.pretrain import trained_teacher

            ctx = self.ctx or Context(run_dir=Path(tempfile.gettempdir()) / "nasframe-sd-teacher",
                                      quiet=True)
            from nasframe_search_spaces.sd_unet.expand import EXPANDS_FROM

            base_name = next((b for p, b in EXPANDS_FROM.items() if self._preset_is(p)), None)
            cfg, vcfg = self.config, self.vae_config
            if base_name is not None:                    # train the 4-channel model, then expand
                from nasframe_search_spaces.sd_unet.network import PRESETS
                from nasframe_search_spaces.sd_unet.vae import VAE_PRESETS

                cfg, vcfg = PRESETS[base_name], VAE_PRESETS[base_name]
            unet_init = vae_init = None
            if self.path is not None:                     # fine-tune local weights
                unet_init = self._load_unet(cfg)
            if self.vae_path is not None or self._path_holds_vae():
                vae_init = self._load_vae(vcfg)
            self._trained = trained_teacher(cfg, vcfg, self.train, ctx,
                                            seed=self.seed, context_length=self.context_length,
                                            latent_size=self.latent_size,
                                            unet_init=unet_init, vae_init=vae_init)
            if base_name is not None:
                from nasframe_search_spaces.sd_unet.expand import expanded_teacher

                self._trained = expanded_teacher(self._trained, cfg, vcfg, self.config,
                                                 self.vae_config, self.train, ctx, seed=self.seed,
                                                 latent_size=self.latent_size)
            if self.ctx is not None:
                r = self._trained["report"]
                how = "loaded from the cache" if r.get("cached") else f"trained in {r.get('seconds', 0):.0f} s"
                self.ctx.log(f"[sd_unet] trained teacher {how} ({r.get('path')})")
        return self._trained

    def training_batch(self, batch: int, latent: int, seed: int) -> tuple[torch.Tensor, ...]:
        """Noised crops of the trained teacher's latent pool: ``(x_t, t, ehs)``, t uniform."""
        import torch

        from nasframe_search_spaces.sd_unet.pretrain import scheduler

        tr = self.trained()
        pool = tr["pool"]
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, pool.shape[0], (batch,), generator=g)
        side = pool.shape[-1]
        top, left = (int(torch.randint(0, side - latent + 1, (1,), generator=g)) for _ in range(2))
        x0 = pool[idx, :, top:top + latent, left:left + latent]
        t = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return scheduler().add_noise(x0, noise, t), t, tr["ehs"].expand(batch, -1, -1)

    @property
    def fidelity_seed(self) -> int:
        own = self.fidelity.get("seed")
        return self.seed if own is None else own

    # -- the U-Net ------------------------------------------------------------------
    @property
    def made(self) -> bool:
        return self._state is not None

    def state(self) -> dict[str, torch.Tensor]:
        """The teacher's weights (:class:`.network.SDUNet` names): loaded from
        ``teacher.path``, else a random initialisation from the seed."""
        if self._state is None:
            import torch

            from nasframe_search_spaces.sd_unet.network import SDUNet, UNetPlan

            if self.is_trained:
                self._state = self.trained()["unet"]
            elif self.path is not None:
                self._state = self._load_unet()
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed)
                    model = SDUNet(UNetPlan.teacher(self.config))
                self._state = {k: v.detach() for k, v in model.state_dict().items()}
        return self._state

    def _preset_is(self, name: str) -> bool:
        from nasframe_search_spaces.sd_unet.network import PRESETS

        return PRESETS[name] == self.config

    def _load_unet(self, config=None) -> dict[str, torch.Tensor]:
        from nasframe_search_spaces.sd_unet.surgery import load_teacher

        try:
            return load_teacher(self.path, config or self.config)
        except ValueError as err:
            raise TeacherError("teacher.path", self.path, str(err)) from None

    def model(self, part: str | None = None) -> torch.nn.Module:
        """The full teacher U-Net, or VAE part ``part`` (eval mode; built once, do not modify)."""
        if part in VAE_PARTS:
            return self._vae_model(part)
        if part is not None:
            raise ValueError(f"sd_unet has no teacher for part {part!r} (fidelity works on the "
                             "U-Net, vae_encoder and vae_decoder)")
        if self._model is None:
            import torch

            from nasframe_search_spaces.sd_unet.network import SDUNet, UNetPlan

            state = self.state()
            with torch.device("meta"):                # share the state's tensors: no copy
                model = SDUNet(UNetPlan.teacher(self.config))
            model.load_state_dict(state, assign=True)
            self._model = model.eval().requires_grad_(False)
        return self._model

    def digest(self) -> str:
        if self._digest is None:
            from nasframe.distill import module_digest

            self._digest = module_digest(self.state())
        return self._digest

    def level_indices(self, plan: UNetPlan) -> list:
        """The teacher channels each level keeps under ``plan`` (None: all)."""
        key = tuple(plan.widths)
        if key not in self._levels:
            from nasframe_search_spaces.sd_unet.surgery import level_indices

            self._levels[key] = level_indices(self.state(), plan)
        return self._levels[key]

    # -- the VAE ---------------------------------------------------------------------
    def vae_state(self) -> dict[str, torch.Tensor]:
        """The teacher VAE (``AutoencoderKL`` names): from ``vae.path``, else from a
        pipeline folder given as ``teacher.path`` (its ``vae/``) or a single-file SD
        checkpoint given as ``teacher.path`` (its ``first_stage_model``), else a random
        initialisation from the seed."""
        if self._vae_state is None:
            import torch

            from nasframe_search_spaces.sd_unet.vae import VAEDecoder, VAEEncoder

            if self.is_trained:
                self._vae_state = self.trained()["vae"]
            elif self.vae_path is not None or self._path_holds_vae():
                self._vae_state = self._load_vae()
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed + 1)
                    state = {**VAEEncoder(self.vae_config).state_dict(),
                             **VAEDecoder(self.vae_config).state_dict()}
                self._vae_state = {k: v.detach() for k, v in state.items()}
        return self._vae_state

    def _path_holds_vae(self) -> bool:
        """``teacher.path`` holds the VAE: a pipeline folder's ``vae/``, or a single-file
        SD checkpoint's ``first_stage_model``."""
        from nasframe_search_spaces.sd_unet.vae import holds_vae

        return self.path is not None and holds_vae(self.path)

    def _load_vae(self, config=None) -> dict[str, torch.Tensor]:
        from nasframe_search_spaces.sd_unet.vae import load_vae_teacher

        path, field = self.vae_path, "vae.path"
        if path is None:
            path, field = self.path, "teacher.path"
        try:
            return load_vae_teacher(path, config or self.vae_config)
        except ValueError as err:
            raise TeacherError(field, path, str(err)) from None

    @property
    def vae_made(self) -> bool:
        return self._vae_state is not None

    def _vae_model(self, part: str) -> torch.nn.Module:
        if part not in self._vae_models:
            from nasframe_search_spaces.sd_unet.vae import build_vae_part, inherit_vae

            model = build_vae_part(self.vae_config, part, 1.0, None)
            inherit_vae(model, self.vae_state())
            self._vae_models[part] = model.eval().requires_grad_(False)
        return self._vae_models[part]

    # -- fixed inputs ------------------------------------------------------------------
    def inputs(self, part: str | None = None) -> list[tuple[torch.Tensor, ...]]:
        """The fixed inputs fidelity is measured on: batches of ``(sample, timestep,
        encoder_hidden_states)``. From ``fidelity.inputs`` (a .safetensors file with
        those three tensors) or drawn from the fidelity seed: latents ~ N(0, 1),
        timesteps evenly spread over [0, 1000), text embeddings ~ N(0, 1)."""
        if part is not None:
            return self._vae_inputs(part)
        if self._inputs is None:
            import torch

            fp = self.fidelity
            if fp.get("inputs") is not None:
                sample, t, ehs = self._load_inputs(fp["inputs"])
            elif self.is_trained:
                sample, t, ehs = self._held_out_inputs(fp["samples"])
            else:
                from nasframe_search_spaces.sd_unet.align import synthetic_batch

                n = fp["samples"]
                sample, _, ehs = synthetic_batch(self.config, n, self.latent_size,
                                                 self.context_length, 10_000_019 + self.fidelity_seed)
                t = torch.linspace(0, 999, n).round().long()
            b = fp["batch_size"]
            self._inputs = [(sample[i:i + b], t[i:i + b], ehs[i:i + b])
                            for i in range(0, sample.shape[0], b)]
        return self._inputs

    def _held_out_inputs(self, n: int) -> tuple[torch.Tensor, ...]:
        """Noised latents of crops of photos the teacher never saw, t evenly over [0, 1000)."""
        import torch

        from nasframe_search_spaces.sd_unet import pretrain

        tr = self.trained()
        g = torch.Generator().manual_seed(80_000_023 + self.fidelity_seed)
        images = pretrain.random_crops(pretrain.HELD_OUT_PHOTOS, n,
                                       self.latent_size * self.vae_config.downsampling, g)
        latents = pretrain.encode(tr["vae"], self.vae_config, images) * tr["latent_scale"]
        return pretrain.noised_inputs(latents, tr["ehs"], self.fidelity_seed)

    def _vae_inputs(self, part: str) -> list[tuple[torch.Tensor, ...]]:
        """VAE decoder: latents ~ N(0, 1) / scaling_factor (the magnitude of SD's
        latents); encoder: images uniform in [-1, 1]; ``fidelity.samples`` of them."""
        import torch

        from nasframe_search_spaces.sd_unet.vae import vae_example_inputs

        fp = self.fidelity
        side = self.image_size or self.latent_size * self.vae_config.downsampling
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000_003 + self.fidelity_seed)
            (x,) = vae_example_inputs(self.vae_config, part, None, fp["samples"], side)
        if part == "vae_decoder":
            x = x / self.vae_config.scaling_factor
        b = fp["batch_size"]
        return [(x[i:i + b],) for i in range(0, x.shape[0], b)]

    def _load_inputs(self, path: str):
        from safetensors.torch import load_file

        where = "fidelity.inputs"
        if not Path(path).is_file():
            raise TeacherError(where, path, "no such file; give a .safetensors file with tensors "
                               "`sample`, `timestep` and `encoder_hidden_states`")
        try:
            data = load_file(path)
        except Exception as err:  # noqa: BLE001 - a broken file is a config error
            raise TeacherError(where, path, f"cannot be read as safetensors ({err})") from None
        missing = [k for k in ("sample", "timestep", "encoder_hidden_states") if k not in data]
        if missing:
            raise TeacherError(where, path, f"lacks tensor(s) {', '.join(missing)}")
        sample, t, ehs = data["sample"], data["timestep"].long(), data["encoder_hidden_states"]
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise TeacherError(where, path, f"`sample` has shape {tuple(sample.shape)}; expected "
                               f"(N, {cfg.in_channels}, H, W)")
        if ehs.ndim != 3 or ehs.shape[-1] != cfg.cross_attention_dim or ehs.shape[0] != sample.shape[0]:
            raise TeacherError(where, path, f"`encoder_hidden_states` has shape {tuple(ehs.shape)}; "
                               f"expected ({sample.shape[0]}, tokens, {cfg.cross_attention_dim})")
        if t.ndim != 1 or t.shape[0] != sample.shape[0]:
            raise TeacherError(where, path, f"`timestep` has shape {tuple(t.shape)}; expected "
                               f"({sample.shape[0]},)")
        return sample.float(), t, ehs.float()
