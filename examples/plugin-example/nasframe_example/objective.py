"""``fit_loss``: how well a model fits a small, fixed synthetic regression task.

The task (the same for every candidate, seeded by ``data_seed``):

* inputs ``x``: ``(samples, *input_shape)``, standard normal, where
  ``input_shape`` is the search space's (no batch dimension);
* targets ``y = tanh(x_flat @ A) @ B``, reshaped to the model's output shape:
  a random one-hidden-layer "teacher" with ``A``: ``(D, 32)``, entries
  ``N(0, 1/D)``, and ``B``: ``(32, O)``, entries ``N(0, 1/32)``, where ``D`` and
  ``O`` are the flattened input and output sizes.

A copy of the candidate's model (initialised with the trial's seed) takes
``steps`` full-batch Adam steps on the mean squared error; the value is the
final training MSE (lower is better). Everything is seeded and full-batch, so
the same architecture and seed give the same value: a deterministic proxy.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from nasframe import Field, Objective, Params, Value
from nasframe.params import Float, Int

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context, SearchSpace

TEACHER_HIDDEN = 32


class FitLoss(Objective):
    """Final training MSE after a few Adam steps on a seeded synthetic regression task.

    Params: the nested ``Params`` model. The value's details hold the loss
    before training (``initial_loss``) and the settings.
    """

    name = "fit_loss"
    direction = "min"
    kind = "proxy"      # a short-training estimate of quality, not a measurement
    backend = "torch"
    unit = "MSE"
    cost = 5.0          # trains a model: evaluated after cheap objectives such as `params`

    class Params(Params):
        steps: Int = Field(30, ge=1, le=100_000)
        """Full-batch Adam steps."""
        lr: Float = Field(0.01, gt=0, le=10)
        """Adam learning rate."""
        samples: Int = Field(256, ge=1, le=1_000_000)
        """Training set size."""
        data_seed: Int | None = Field(None, ge=0)
        """Seed of the task (default: the experiment's seed)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.steps, self.lr, self.samples = self.params.steps, self.params.lr, self.params.samples
        self.data_seed = 0 if self.params.data_seed is None else self.params.data_seed
        self._inputs: torch.Tensor | None = None
        self._targets: dict[tuple[int, ...], torch.Tensor] = {}

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        """Draw the inputs once; the targets follow on first use (they need the output shape)."""
        new_seed = ctx.seed_for(self.params.data_seed)
        if new_seed != self.data_seed:
            self.data_seed, self._inputs = new_seed, None
        self._make_inputs(space)

    def device(self, ctx: Context) -> str:
        return ctx.device  # the model is trained there

    def _make_inputs(self, space: SearchSpace) -> torch.Tensor:
        import torch

        shape = space.input_shape
        if not shape:
            raise ValueError(f"fit_loss needs a search space with an `input_shape`; "
                             f"'{space.name}' has none")
        shape = tuple(shape)
        if self._inputs is None or tuple(self._inputs.shape[1:]) != shape:
            gen = torch.Generator().manual_seed(self.data_seed)
            self._inputs = torch.randn(self.samples, *shape, generator=gen)
            self._targets.clear()
        return self._inputs

    def _targets_for(self, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
        """``tanh(x_flat @ A) @ B`` reshaped to ``(samples, *out_shape)``; cached per shape."""
        import torch

        if out_shape not in self._targets:
            d, o = x[0].numel(), math.prod(out_shape)
            gen = torch.Generator().manual_seed(self.data_seed + 1)
            a = torch.randn(d, TEACHER_HIDDEN, generator=gen) / math.sqrt(d)
            b = torch.randn(TEACHER_HIDDEN, o, generator=gen) / math.sqrt(TEACHER_HIDDEN)
            y = torch.tanh(x.reshape(len(x), d) @ a) @ b
            self._targets[out_shape] = y.reshape(len(x), *out_shape)
        return self._targets[out_shape]

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import torch

        device = torch.device(ctx.device)
        x_cpu = self._make_inputs(candidate.space)
        model = copy.deepcopy(candidate.model).to(device).train()  # the candidate's model stays untouched
        x = x_cpu.to(device)
        with torch.no_grad():
            out_shape = tuple(model(x[:1]).shape[1:])
        y = self._targets_for(x_cpu, out_shape).to(device)
        loss_fn = torch.nn.MSELoss()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        with torch.enable_grad():
            for step in range(self.steps):
                loss = loss_fn(model(x), y)
                if step == 0:
                    initial = loss.item()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            final = float(loss_fn(model(x), y))
        return Value(final, {"initial_loss": initial, "steps": self.steps, "lr": self.lr,
                             "samples": self.samples, "data_seed": self.data_seed})
