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
from typing import TYPE_CHECKING, Any

from nasframe import Objective, Value

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context, SearchSpace

TEACHER_HIDDEN = 32


def _check_int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


class FitLoss(Objective):
    """Final training MSE after a few Adam steps on a seeded synthetic regression task.

    Params (YAML ``params``): ``steps`` (Adam steps, default 30), ``lr``
    (learning rate, default 0.01), ``samples`` (training set size, default
    256), ``data_seed`` (the task's seed, default 0). The value's details hold
    the loss before training (``initial_loss``) and the settings.
    """

    name = "fit_loss"
    direction = "min"
    kind = "proxy"      # a short-training estimate of quality, not a measurement
    backend = "torch"
    unit = "MSE"
    cost = 5.0          # trains a model: evaluated after cheap objectives such as `params`

    def __init__(self, steps: int = 30, lr: float = 0.01, samples: int = 256, data_seed: int = 0):
        self.steps = _check_int("fit_loss.params.steps", steps, 1)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"fit_loss.params.lr must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.samples = _check_int("fit_loss.params.samples", samples, 1)
        self.data_seed = _check_int("fit_loss.params.data_seed", data_seed, 0)
        self._inputs: torch.Tensor | None = None
        self._targets: dict[tuple[int, ...], torch.Tensor] = {}

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        """Draw the inputs once; the targets follow on first use (they need the output shape)."""
        self._make_inputs(space)

    def device(self, ctx: Context) -> str:
        return ctx.device  # the model is trained there

    def _make_inputs(self, space: SearchSpace) -> torch.Tensor:
        import torch

        shape = getattr(space, "input_shape", None)
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
