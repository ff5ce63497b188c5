"""The command line: plugins, validate, run, resume, evaluate, export.

Exit codes: 0 success; 2 usage or configuration error (one clear message, no
traceback); 1 a failure while running (traceback only with ``--debug``);
130 interrupted (the run can be resumed).
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nasframe import __version__
from nasframe.errors import ConfigError, NasframeError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _plugins_cmd(args: argparse.Namespace) -> int:
    from nasframe.plugins import get_plugins

    plugins = get_plugins()
    cols = ("kind", "name", "plugin", "version", "class")
    rows = [(kind, e.name, e.plugin, e.version, f"{e.cls.__module__}.{e.cls.__qualname__}")
            for kind, reg in (("search space", plugins.search_spaces),
                              ("objective", plugins.objectives), ("strategy", plugins.strategies),
                              ("executor", plugins.executors))
            for e in reg.entries()]
    if out.is_terminal:
        table = Table(*cols, title="nasframe components")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    else:  # piped: one tab-separated line per component
        print("\t".join(cols))
        for row in rows:
            print("\t".join(row))
    for f in plugins.failures:
        console.print(f"[red]plugin '{f.plugin}' failed to load:[/red] {f.error}")
        if args.debug:
            console.print(f.detail)
    return 0


def _load(path: str):
    from nasframe.config import load_config

    text = Path(path).read_text() if Path(path).is_file() else ""
    return load_config(path), text


def _validate_cmd(args: argparse.Namespace) -> int:
    from nasframe.experiment import Experiment
    from nasframe.plugins import get_plugins

    cfg, _ = _load(args.experiment)
    exp = Experiment.from_config(cfg, get_plugins(), source=args.experiment)
    space = exp.space
    n_refs = len(space.reference_architectures())
    out.print(f"[green]ok[/green] {args.experiment}: search space '{space.name}' "
              f"({len(space.decisions())} decisions, up to {space.size:,} architectures, "
              f"{n_refs} reference), objectives "
              + ", ".join(f"{s.key} ({s.direction})" for s in exp.specs)
              + (f", constraints {', '.join(map(str, exp.constraints))}" if exp.constraints else "")
              + f", strategy '{cfg.strategy.name}'")
    return 0


def _run_cmd(args: argparse.Namespace) -> int:
    from nasframe.runner import Runner

    cfg, text = _load(args.experiment)
    run_dir = Path(args.out or cfg.output or f"runs/{cfg.name}")
    runner = Runner.start(cfg, run_dir, text, quiet=args.quiet, source=args.experiment, console=console)
    console.print(f"run directory: {run_dir}")
    return _drive(runner, args)


def _resume_cmd(args: argparse.Namespace) -> int:
    from nasframe.runner import Runner

    runner = Runner.resume(args.run_dir, quiet=args.quiet, console=console)
    done = runner.search_trials_done()
    running = len(runner.store.trials("running"))
    console.print(f"resuming {args.run_dir}: {done} trials done"
                  + (f", {running} interrupted trial(s) will run again" if running else ""))
    return _drive(runner, args)


def _drive(runner, args: argparse.Namespace) -> int:
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]; every finished trial is stored. "
                      f"Continue with: nasframe resume {runner.run_dir}")
        return 130
    console.print(f"[green]done[/green] ({summary.stopped_because}): {summary.trials} trials, "
                  f"{summary.failed} failed, {summary.front} on the front, "
                  f"hypervolume {summary.hypervolume:.4g}")
    if not args.no_export:
        from nasframe.export import export_run

        paths = export_run(runner.run_dir)
        console.print("exported: " + ", ".join(str(p) for p in paths.values()))
        _print_pick(paths, console)
    else:
        console.print(f"export with: nasframe export {runner.run_dir}")
    return 0


def _evaluate_cmd(args: argparse.Namespace) -> int:
    import yaml

    from nasframe.architecture import Architecture
    from nasframe.experiment import Experiment, trial_seed
    from nasframe.trial import Trial

    cfg, _ = _load(args.experiment)
    exp = Experiment.from_config(cfg, source=args.experiment)
    refs = exp.space.reference_architectures()
    if args.arch in refs:
        arch, origin = refs[args.arch], f"reference:{args.arch}"
    elif Path(args.arch).is_file():
        try:
            doc = yaml.safe_load(Path(args.arch).read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"--arch {args.arch}: invalid YAML: {err}") from None
        if isinstance(doc, dict) and isinstance(doc.get("architecture"), dict):
            doc = doc["architecture"]
        if not isinstance(doc, dict):
            raise ConfigError(f"--arch {args.arch}: expected a mapping of decisions "
                              "(or an `architecture:` mapping, as in front/<id>.yaml)")
        arch, origin = Architecture(doc), f"file:{args.arch}"
    else:
        raise ConfigError(f"--arch {args.arch!r}: neither a reference architecture of "
                          f"'{exp.space.name}' (available: {', '.join(refs) or 'none'}) nor a file")
    reason = exp.space.validate(arch)
    if reason:
        raise ConfigError(f"--arch {args.arch}: not an architecture of '{exp.space.name}': {reason}")
    run_dir = Path(args.out or cfg.output or f"runs/{cfg.name}")
    ctx = exp.context(run_dir, quiet=args.quiet, console=console)
    with console.status("preparing", spinner="dots"):
        exp.prepare(ctx)
    trial = Trial(0, arch, "running", seed=trial_seed(cfg.seed, arch), origin=origin)
    with console.status(f"evaluating {arch.id}", spinner="dots"):
        result = exp.evaluate(trial, ctx, skip_infeasible=False)
    doc: dict[str, Any] = {
        "id": arch.id, "origin": origin, "architecture": arch.to_dict(), "status": result.status,
        "values": {k: {"value": v, "direction": _direction(exp, k),
                       "unit": exp.objectives[k].unit,
                       "provenance": result.provenance[k].to_dict()}
                   for k, v in result.values.items()},
        "feasible": result.feasible,
        "constraints": [str(c) for c in exp.constraints],
    }
    if result.error:
        doc["error"] = result.error
    out.print_json(json.dumps(doc, default=str))
    return 0 if result.status != "failed" else 1


def _direction(exp, key: str) -> str:
    for s in exp.specs:
        if s.key == key:
            return s.direction
    return exp.objectives[key].direction + " (constraint only)"


def _export_cmd(args: argparse.Namespace) -> int:
    from nasframe.export import export_run

    paths = export_run(args.run_dir, args.out)
    for name, p in paths.items():
        out.print(f"{name}: {p}")
    _print_pick(paths, out)
    return 0


def _print_pick(paths: dict[str, Path], where: Console) -> None:
    """One line naming the strategy's pick, when the export has one."""
    try:
        pick = json.loads(Path(paths["pareto.json"]).read_text()).get("pick")
    except (OSError, ValueError, KeyError):
        return
    if pick:
        where.print(f"pick: trial {pick['trial']} ({pick['id']}), {pick['rule']}; "
                    f"{Path(paths['front']) / 'pick.yaml'}", markup=False, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    # after the subcommand too; SUPPRESS keeps it from resetting a `nasframe --debug CMD`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    parser = argparse.ArgumentParser(prog="nasframe", parents=[top],
                                     description="Plugin-based neural architecture search.")
    parser.add_argument("--version", action="version", version=f"nasframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plugins", parents=[common], help="components by kind, with plugin and version")
    p.set_defaults(fn=_plugins_cmd)

    p = sub.add_parser("validate", parents=[common], help="check an experiment file")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.set_defaults(fn=_validate_cmd)

    for name, help_, arg in (("run", "run a search", "experiment"),
                             ("resume", "continue a stopped or killed run", "run_dir")):
        p = sub.add_parser(name, parents=[common], help=help_)
        p.add_argument(arg, metavar="EXP.yaml" if arg == "experiment" else "RUN_DIR")
        if name == "run":
            p.add_argument("--out", help="run directory (default: the experiment's `output`)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--no-export", action="store_true", help="do not export when done")
        p.set_defaults(fn=_run_cmd if name == "run" else _resume_cmd)

    p = sub.add_parser("evaluate", parents=[common], help="evaluate one architecture, print JSON")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.add_argument("--arch", required=True, metavar="NAME|FILE",
                   help="a reference architecture name or a YAML file (e.g. front/<id>.yaml)")
    p.add_argument("--out", help="directory for prepared artifacts (default: the experiment's `output`)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_evaluate_cmd)

    p = sub.add_parser("export", parents=[common], help="write trials.csv, pareto.json, plots, front/")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="write here instead of RUN_DIR")
    p.set_defaults(fn=_export_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        if args.debug:
            traceback.print_exc()
        for line in err.problems or [str(err)]:
            console.print(f"error: {line}", style="red", markup=False, highlight=False)
        return 2
    except NasframeError as err:
        if args.debug:
            traceback.print_exc()
        console.print(f"error: {err}", style="red", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    except Exception as err:  # an unexpected failure: one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            console.print(f"error: {type(err).__name__}: {err} (run with --debug for the "
                          "traceback)", style="red", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
