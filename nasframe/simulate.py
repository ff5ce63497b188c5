"""Drive a strategy offline, against a function or a precomputed table of values.

For benchmarks and tests that compare strategies on an exhaustively scored
space: the strategy is driven exactly as the runner drives it (asked
architectures enter the history as running trials, then finish and are
told), but each evaluation is a lookup, so thousands of searches take seconds.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nasframe.architecture import Architecture
from nasframe.history import TrialHistory
from nasframe.strategy import Strategy
from nasframe.trial import Problem, Trial

#: ``evaluate(arch) -> {objective key: value}``; raise to make the trial fail
Evaluate = Callable[[Architecture], Mapping[str, float]]


def finished_trial(problem: Problem, number: int, arch: Architecture, evaluate: Evaluate,
                   origin: str = "strategy") -> Trial:
    """A finished trial of ``arch``: complete with its values and feasibility under the
    problem's constraints, or failed with the error ``evaluate`` raised."""
    try:
        values = {k: float(v) for k, v in evaluate(arch).items()}
    except Exception as err:  # noqa: BLE001 - a failed evaluation is a failed trial
        return Trial(number, arch, "failed", error=f"{type(err).__name__}: {err}", origin=origin)
    violation = float(sum(c.violation(values.get(c.key)) for c in problem.constraints))
    return Trial(number, arch, "complete", values, feasible=violation == 0.0, violation=violation,
                 origin=origin)


def simulate(make_strategy: Callable[[TrialHistory], Strategy], problem: Problem,
             evaluate: Evaluate, budget: int, batch: int = 1,
             references: Mapping[str, Architecture] | None = None) -> list[Trial]:
    """Run a search of ``budget`` evaluations (references first, outside the budget).

    ``make_strategy(history)`` makes the strategy over the history this function keeps.
    Returns every finished trial in order; stops early when the strategy has nothing
    left to propose.
    """
    history = TrialHistory()
    strategy = make_strategy(history)
    out: list[Trial] = []

    def run(archs: list[tuple[Architecture, str]]) -> list[Trial]:
        start = len(out)
        history.record(Trial(start + i, a, "running", origin=o) for i, (a, o) in enumerate(archs))
        done = [finished_trial(problem, start + i, a, evaluate, o) for i, (a, o) in enumerate(archs)]
        history.record(done)
        strategy.tell(done)
        out.extend(done)
        return done

    if references:
        run([(a, f"reference:{k}") for k, a in references.items()])
    n = 0
    while n < budget:
        asked = strategy.ask(min(batch, budget - n))
        if not asked:
            break
        run([(a, "strategy") for a in asked])
        n += len(asked)
    return out


def table_lookup(table: Mapping[str, Mapping[str, Any]]) -> Evaluate:
    """An ``evaluate`` reading ``table[arch.id]`` (a KeyError fails the trial)."""
    return lambda arch: table[arch.id]
