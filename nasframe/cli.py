"""The command line: plugins, validate, run, resume, evaluate, export, dashboard.

Exit codes: 0 success; 2 usage or configuration error (one clear message, no
traceback); 1 a failure while running (traceback only with ``--debug``);
130 interrupted (the run can be resumed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nasframe import __version__
from nasframe.errors import ConfigError, NasframeError, Terminated

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


_KINDS = (("search space", "search_spaces"), ("objective", "objectives"),
          ("strategy", "strategies"), ("executor", "executors"),
          ("latency backend", "latency_backends"), ("deploy check", "deploy_checks"))


_KIND_WORDS = {"searchspace": "search space", "searchspaces": "search space", "space": "search space",
               "spaces": "search space", "objective": "objective", "objectives": "objective",
               "strategy": "strategy", "strategies": "strategy", "executor": "executor",
               "executors": "executor", "latencybackend": "latency backend",
               "latencybackends": "latency backend", "backend": "latency backend",
               "backends": "latency backend"}


def _one_line(cls) -> str:
    import inspect

    doc = (inspect.getdoc(cls) or "").strip().split("\n\n")[0].replace("\n", " ")
    first = doc.split(". ")[0].rstrip(".")
    return first[:100] + ("..." if len(first) > 100 else "")


def _plugins_cmd(args: argparse.Namespace) -> int:
    import fnmatch

    from nasframe.plugins import get_plugins

    plugins = get_plugins()
    query = args.name
    kind_filter = pattern = None
    if query:
        word = query.lower().replace(" ", "").replace("_", "").replace("-", "")
        if word in _KIND_WORDS:
            kind_filter = _KIND_WORDS[word]
        elif any(c in query for c in "*?["):
            pattern = query
        else:
            return _describe_component(plugins, query)
    cols = ("kind", "name", "plugin", "version", "status", "what")
    rows = []
    for kind, attr in _KINDS:
        if kind_filter and kind != kind_filter:
            continue
        for e in getattr(plugins, attr).entries():
            if pattern and not fnmatch.fnmatchcase(e.name, pattern):
                continue
            why = e.unavailable()
            status = f"unavailable: {why}" if why else "ok"
            rows.append(dict(zip(cols, (kind, e.name, e.plugin, e.version, status,
                                        _one_line(e.cls)))))
    if pattern and not rows:
        every = [n for _, attr in _KINDS for n in getattr(plugins, attr).names()]
        raise ConfigError(f"no component matches {query!r}; components: {', '.join(sorted(every))}")
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    elif args.format == "csv":
        _csv_out(rows, list(cols))
    elif out.is_terminal:
        table = Table(*cols, title="nasframe components (`nasframe plugins NAME` shows params)")
        for row in rows:
            table.add_row(*(escape(str(v)) for v in row.values()))  # [nni] is not markup
        out.print(table)
    else:  # piped: one tab-separated line per component
        print("\t".join(cols))
        for row in rows:
            print("\t".join(row.values()))
    for f in plugins.failures:
        console.print(f"[red]plugin '{f.plugin}' failed to load:[/red] {f.error}")
        if args.debug:
            console.print(f.detail)
    return 0


def _describe_component(plugins, name: str) -> int:
    """``nasframe plugins NAME``: what a component is, what it needs and its params."""
    import inspect

    from nasframe import capabilities
    from nasframe.errors import unknown_name
    from nasframe.params import describe_params

    found = [(kind, getattr(plugins, attr).entry(name)) for kind, attr in _KINDS
             if name in getattr(plugins, attr)]
    if not found:
        every = [n for _, attr in _KINDS for n in getattr(plugins, attr).names()]
        raise ConfigError(unknown_name("component", name, every))
    for kind, e in found:
        cls = e.cls
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        out.print(f"[bold]{e.name}[/bold] ({kind}, plugin '{e.plugin}' {e.version}, "
                  f"{cls.__module__}.{cls.__qualname__})", highlight=False)
        if doc:
            out.print(doc, markup=False, highlight=False)
        why = e.unavailable()
        if why:
            out.print("[red]unavailable[/red]: " + escape(why), highlight=False)
        if kind == "search space":
            out.print(f"provides: {capabilities.names(capabilities.provided_by_class(cls))}",
                      highlight=False)
        if kind == "objective":
            out.print(f"direction {cls.direction}, {cls.kind}, unit {cls.unit or '-'}; requires: "
                      f"{capabilities.names(cls.requires)}", highlight=False)
        params = describe_params(cls.Params)
        if not params:
            out.print("params: none")
            continue
        table = Table("param", "type", "default", "what", title=None, show_edge=False)
        for p in params:
            table.add_row(p.name, p.type, p.default, p.doc)
        out.print(table)
    return 0


def _load(path: str):
    from nasframe.experiment import checked_config
    from nasframe.safeyaml import load_yaml_file

    data = load_yaml_file(path, "experiment file")   # size, encoding, nesting, aliases, duplicates
    cfg = checked_config(data, path)                  # every problem at once
    return cfg, Path(path).read_text(encoding="utf-8")


def _validate_cmd(args: argparse.Namespace) -> int:
    from nasframe.experiment import Experiment
    from nasframe.plugins import get_plugins

    from nasframe import trust

    cfg, _ = _load(args.experiment)
    with trust.check_only():     # names of code are checked, never imported, by validate
        exp = Experiment.from_config(cfg, get_plugins(), source=args.experiment)
    from nasframe import accel

    accel.check(cfg.device, cfg.precision)    # device: cuda on a machine without a GPU: exit 2
    space = exp.space
    n_refs = len(space.reference_architectures())
    out.print(f"[green]ok[/green] {args.experiment}: search space '{space.name}' "
              f"({len(space.decisions())} decisions, up to {space.size:,} architectures, "
              f"{n_refs} reference), objectives "
              + ", ".join(f"{s.key} ({s.direction})" for s in exp.specs)
              + (f", constraints {', '.join(map(str, exp.constraints))}" if exp.constraints else "")
              + f", strategy '{cfg.strategy.name}'"
              + (f", on {cfg.device}" if cfg.device != "cpu" else "")
              + (f" ({cfg.precision} autocast)" if cfg.precision != "fp32" else ""))
    return 0


def _run_cmd(args: argparse.Namespace) -> int:
    from nasframe.runner import Runner

    cfg, text = _load(args.experiment)
    run_dir = cfg.run_dir(args.out)
    runner = Runner.start(cfg, run_dir, text, quiet=args.quiet, source=args.experiment, console=console)
    console.print(f"run directory: {run_dir}")
    return _drive(runner, args)


def _resume_cmd(args: argparse.Namespace) -> int:
    from nasframe.runner import Runner

    cfg = _load(args.experiment)[0] if args.experiment else None
    runner = Runner.resume(args.run_dir, quiet=args.quiet, console=console, config=cfg,
                           retry_failed=args.retry_failed, source=args.experiment or "<config>")
    for notice in runner.notices:
        console.print(notice, markup=False, highlight=False)
    done = runner.search_trials_done()
    running = runner.history.running()
    interrupted = sum(t.failure == "interrupted" for t in running)
    crashed = len(running) - interrupted
    failed_n = sum(t.status == "failed" for t in runner.history.trials())
    console.print(f"resuming {args.run_dir}: {done} trials done"
                  + (f", {interrupted} interrupted trial(s) will run again" if interrupted else "")
                  + (f", {crashed} trial(s) of a run that was killed will run again if attempts "
                     f"are left (max_attempts {runner.cfg.max_attempts})" if crashed else "")
                  + (f", {failed_n} failed trial(s) will run again" if args.retry_failed and failed_n
                     else ""), markup=False, highlight=False)
    return _drive(runner, args)


def _drive(runner, args: argparse.Namespace) -> int:
    from nasframe.errors import Terminated

    for notice in getattr(runner, "notices", []) if args.command == "run" else []:
        console.print(notice, markup=False, highlight=False)
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]; every finished trial is stored, the "
                      f"trials in flight will run again. Continue with: nasframe resume "
                      f"{runner.run_dir}")
        return 130
    except Terminated:
        console.print(f"\n[yellow]stopped (SIGTERM)[/yellow]; every finished trial is stored, the "
                      f"trials in flight will run again. Continue with: nasframe resume "
                      f"{runner.run_dir}")
        return 143
    refs = (f" + {summary.references} reference architecture"
            f"{'s' if summary.references != 1 else ''}" if summary.references else "")
    console.print(f"[green]done[/green] ({summary.stopped_because}): {summary.trials} trials"
                  f"{refs}, {summary.failed} failed, {summary.front} on the front, "
                  f"hypervolume {summary.hypervolume:.4g}")
    if not args.no_export:
        from nasframe.export import export_run

        paths = export_run(runner.run_dir)
        console.print("exported: " + ", ".join(str(p) for p in paths.values()))
        _print_pick(paths, console)
    else:
        console.print(f"export with: nasframe export {runner.run_dir}")
    return 0


def _arch_file(path: str, space=None):
    """An architecture from a YAML file: a mapping of decisions, or a front/<id>.yaml.

    Nothing of the file's content is quoted back unless it is one of ``space``'s decision
    names (a wrong file given by mistake may hold anything, secrets included)."""
    from nasframe.architecture import Architecture
    from nasframe.safeyaml import load_yaml_file

    doc = load_yaml_file(path, "architecture file")
    if isinstance(doc, dict) and isinstance(doc.get("architecture"), dict):
        doc = doc["architecture"]
    hint = "is it an architecture file, such as RUN_DIR/front/<id>.yaml?"
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"--arch {path}: expected a mapping of decision -> value (or an "
                          f"`architecture:` mapping, as in front/<id>.yaml); {hint}")
    if space is not None:
        names = [d.name for d in space.decisions()]
        unknown = sum(1 for k in doc if k not in names)
        if unknown:
            raise ConfigError(f"--arch {path}: {unknown} of its {len(doc)} keys are not decisions "
                              f"of '{space.name}' (its decisions: {', '.join(names)}); {hint}")
    for i, (key, value) in enumerate(doc.items()):
        if not isinstance(key, str) or isinstance(value, dict) or value is None:
            what = "a mapping" if isinstance(value, dict) else "no value" if value is None \
                else "a key that is not text"
            name = f"'{key}'" if space is not None and isinstance(key, str) else f"number {i + 1}"
            raise ConfigError(f"--arch {path}: decision {name} holds {what}; a decision's value "
                              "is a number, a string, true/false or a list")
    try:
        return Architecture(doc)
    except (TypeError, ValueError):
        raise ConfigError(f"--arch {path}: not a valid architecture (values must be numbers, "
                          f"strings, true/false or lists); {hint}") from None


def _evaluate_cmd(args: argparse.Namespace) -> int:
    from nasframe.experiment import Experiment, trial_seed
    from nasframe.trial import Trial

    cfg, _ = _load(args.experiment)
    exp = Experiment.from_config(cfg, source=args.experiment)
    refs = exp.space.reference_architectures()
    if args.arch in refs:
        arch, origin = refs[args.arch], f"reference:{args.arch}"
    elif Path(args.arch).exists():
        arch, origin = _arch_file(args.arch, exp.space), f"file:{args.arch}"
    else:
        raise ConfigError(f"--arch {args.arch!r}: neither a reference architecture of "
                          f"'{exp.space.name}' (available: {', '.join(refs) or 'none'}) nor a file")
    reason = exp.space.validate(arch)
    if reason:
        raise ConfigError(f"--arch {args.arch}: not an architecture of '{exp.space.name}': {reason}")
    run_dir = cfg.run_dir(args.out)
    ctx = exp.context(run_dir, quiet=args.quiet, console=console)
    with console.status("preparing", spinner="dots"):
        exp.prepare(ctx)
    trial = Trial(0, arch, "running", seed=trial_seed(cfg.seed, arch), origin=origin)
    from nasframe import stopping

    with console.status(f"evaluating {arch.id}", spinner="dots"), stopping.watch():
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

    if args.optuna:
        from nasframe.optuna_study import write_study

        study = write_study(args.run_dir, args.optuna, args.study_name, args.overwrite)
        out.print(f"optuna study {study.study_name!r} ({len(study.trials)} trials): {args.optuna}",
                  markup=False, highlight=False)
        out.print(f"view it with: optuna-dashboard {args.optuna}", markup=False, highlight=False)
        return 0
    checks = _deploy_checks(args, args.models or ())
    paths = export_run(args.run_dir, _output(args), models=args.models or (), part=args.part,
                       console=console, checks=checks)
    for name, p in paths.items():
        out.print(f"{name}: {p}")
    _print_pick(paths, out)
    return _checks_failed(paths) if checks else 0


def _output(args: argparse.Namespace) -> str | None:
    """``-o/--output``; the old ``--out`` of export/analyse still works, with a warning."""
    if getattr(args, "old_out", None):
        if args.output:
            raise ConfigError("give -o/--output only (--out is its old name)")
        console.print(f"warning: --out here is now -o/--output (--out names a run directory "
                      f"in every command); writing to {args.old_out}", style="yellow",
                      markup=False, highlight=False)
        return args.old_out
    return args.output


def _dashboard_cmd(args: argparse.Namespace) -> int:
    from nasframe.optuna_study import serve_dashboard

    serve_dashboard(args.run_dir, args.host, args.port,
                    echo=lambda m: out.print(m, markup=False, highlight=False),
                    verbose=args.verbose, refresh=args.refresh)
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


# -- export-model (deployable export of one architecture) ----------------------------------
def _export_model_cmd(args: argparse.Namespace) -> int:
    from nasframe.deploy import SUFFIX, export_architecture
    from nasframe.experiment import Experiment

    cfg, _ = _load(args.experiment)
    exp = Experiment.from_config(cfg, source=args.experiment)
    refs = exp.space.reference_architectures()
    if args.arch in refs:
        arch = refs[args.arch]
    elif Path(args.arch).exists():
        arch = _arch_file(args.arch, exp.space)
    else:
        raise ConfigError(f"--arch {args.arch!r}: neither a reference architecture of "
                          f"'{exp.space.name}' (available: {', '.join(refs) or 'none'}) nor a file")
    reason = exp.space.validate(arch)
    if reason:
        raise ConfigError(f"--arch {args.arch}: not an architecture of '{exp.space.name}': {reason}")
    shape = None
    if args.input_shape:
        try:
            shape = [int(v) for v in args.input_shape.replace("x", ",").split(",")]
        except ValueError:
            raise ConfigError(f"--input-shape {args.input_shape!r}: give integers, batch first, "
                              "e.g. 1,3,256,256") from None
    path = Path(args.output or f"{arch.id}{'-' + args.part if args.part else ''}{SUFFIX[args.format]}")
    from nasframe import capabilities

    provides = capabilities.TrainedWeights in capabilities.provided_by(exp.space)
    needed = capabilities.TrainedWeights in exp.needs()
    if not args.fresh:   # the weights the search used (teacher, distilled blocks: cached)
        ctx = exp.context(cfg.run_dir(args.out), console=console, cpu_fallback=True)
        exp.space.prepare(ctx, exp.needs())
    if args.fresh or not provides or not needed:
        why = ("--fresh" if args.fresh else
               f"search space '{exp.space.name}' trains no weights before a search (its quality "
               "objectives train a throwaway copy per trial)" if not provides else
               "this experiment's objectives need no trained weights, so none were prepared; "
               "add a quality objective such as psnr to export the trained model")
        console.print(f"note: the exported model has freshly initialised, untrained weights "
                      f"({why}); train it before you deploy it", style="yellow", markup=False,
                      highlight=False)
    checks = _deploy_checks(args, (args.format,))
    with console.status(f"exporting {arch.id} ({args.format})"
                        + (f", then {', '.join(args.check)}" if checks else ""), spinner="dots"):
        r = export_architecture(exp, arch, args.format, path, part=args.part, input_shape=shape,
                                checks=checks)
    out.print(f"{r.path}: {args.format} ({r.note or 'exported'}) in {r.seconds:.1f} s", markup=False)
    for n, s_, d in zip(r.input_names, r.input_shapes, r.input_dtypes):
        out.print(f"  input {n}: {s_} {d}", markup=False)
    out.print(f"  check vs PyTorch: max abs error {r.max_abs_error:.3g}, max rel error "
              f"{r.max_rel_error:.3g}; details in {r.path}.json", markup=False)
    failed = _print_checks(r.checks)
    if not r.max_rel_error <= args.tolerance:
        console.print(f"error: the exported model differs from PyTorch by {r.max_rel_error:.3g} "
                      f"relative (--tolerance {args.tolerance:g})", style="red", markup=False)
        return 1
    return 1 if failed else 0


# -- deploy checks: `--check NAME` on export-model and export --models ----------------------
def _add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="append", default=[], metavar="NAME",
                   help="a deploy check on each exported file, e.g. npu (compile for the "
                        "Hexagon NPU, fp32 vs NPU output); repeatable; its report goes into "
                        "the file's .json; exit 1 when it does not pass")
    p.add_argument("--check-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a param of the deploy check (`nasframe plugins NAME`), e.g. "
                        "soc='Snapdragon 8 Gen 3'; repeatable")


def _deploy_checks(args: argparse.Namespace, formats) -> list[Any]:
    """The deploy checks named by ``--check`` with ``--check-option`` params (ConfigError
    naming the option when one is wrong)."""
    import yaml

    from nasframe.plugins import get_plugins

    params: dict[str, Any] = {}
    for item in args.check_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--check-option {item!r}: give KEY=VALUE, e.g. soc=SM8650")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            params[key.strip()] = value
    if params and not args.check:
        raise ConfigError("--check-option sets a deploy check's param; name the check with "
                          "--check NAME")
    checks = []
    for name in dict.fromkeys(args.check):
        check = get_plugins().deploy_checks.create(name, params, where=f"--check {name}")
        wrong = [f for f in formats if f not in check.formats]
        if wrong:
            raise ConfigError(f"--check {name}: checks {', '.join(check.formats)} files, not "
                              f"{', '.join(wrong)}; export {check.formats[0]}")
        checks.append(check)
    return checks


def _print_checks(reports: dict[str, Any]) -> bool:
    """Print each check's summary; True when one did not pass."""
    failed = False
    for name, r in reports.items():
        if r.get("passed"):
            out.print(f"  {name} check: {r.get('summary', '')}", markup=False, highlight=False)
        else:
            failed = True
            console.print(f"error: {name} check did not pass: {r.get('summary', '')}",
                          style="red", markup=False, highlight=False)
    return failed


def _checks_failed(paths: dict[str, Path]) -> int:
    """``export --models --check``: 1 when a deploy check did not pass on an exported file."""
    failed = []
    for name, p in paths.items():
        meta = Path(str(p) + ".json")
        if name.startswith("front/") and meta.is_file():
            checks = json.loads(meta.read_text()).get("checks", {})
            failed += [f"{Path(p).name} ({c})" for c, r in checks.items() if not r.get("passed")]
    if failed:
        console.print(f"error: {len(failed)} model(s) did not pass their deploy check: "
                      + ", ".join(failed), style="red", markup=False, highlight=False)
    return 1 if failed else 0


def _add_export_parsers(sub, common) -> None:
    from nasframe.deploy import FORMATS

    p = _sub(sub, common, "export-model", "export one architecture's deployable model",
             "Exports one architecture (a reference by name, or a YAML file such as "
             "RUN_DIR/front/<id>.yaml) as ONNX, TorchScript or an ExportedProgram, with the "
             "weights the search used (trained and cached in the run directory), and checks it "
             "against PyTorch on the spot (max abs/rel error in <file>.json).",
             "  nasframe export-model examples/ens_device.yaml --arch teacher -o teacher.onnx\n"
             "  nasframe export-model examples/quickstart.yaml --arch runs/quickstart/front/pick.yaml"
             " -o pick.onnx")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.add_argument("--arch", required=True, metavar="NAME|FILE",
                   help="a reference architecture name or a YAML file (e.g. front/<id>.yaml)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("-o", "--output", metavar="PATH", help="the file (default: <id>.<suffix>)")
    p.add_argument("--part", metavar="PART", help="a model part of the space (e.g. vae_decoder)")
    p.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape, batch first")
    p.add_argument("--fresh", action="store_true",
                   help="freshly initialised weights: skip training/loading the space's weights")
    p.add_argument("--out", metavar="DIR", help="the run directory whose prepared weights are "
                   "used (default: the experiment's `output`, else runs/<name>)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative difference from PyTorch accepted (exit 1 above; "
                        "default: %(default)g)")
    _add_check_args(p)
    p.set_defaults(fn=_export_model_cmd)


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM (schedulers, ``docker stop``) unwinds the run like Ctrl-C: state saved,
    workers stopped, lock released, exit code 143."""
    from nasframe.errors import Terminated

    def stop(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:       # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------- results on stdout
_TABLE_COLUMNS = ("number", "status", "origin", "id")


def _rows_out(rows: list[dict[str, Any]], fmt: str, keys: list[str], title: str) -> None:
    """Print trial records as a table (terminal), JSON or CSV."""
    if fmt == "json":
        print(json.dumps(rows, indent=1, default=str))
        return
    if fmt == "csv":
        _csv_out(rows, list(rows[0]) if rows else list(_TABLE_COLUMNS))
        return
    cols = [*_TABLE_COLUMNS, *keys, "is_pareto", "pick", "failure", "error"]
    table = Table(*cols, title=title, show_lines=False)
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in cols))
    Console(soft_wrap=False, width=max(out.width, 160) if not out.is_terminal else None).print(table)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _sorted(rows: list[dict[str, Any]], key: str | None, reverse: bool) -> list[dict[str, Any]]:
    if key is None:
        return rows
    if rows and key not in rows[0]:
        from nasframe.errors import did_you_mean

        raise ConfigError(f"--sort {key}: no such column{did_you_mean(key, rows[0])}; the columns are "
                          + ", ".join(rows[0]))
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(present, key=lambda r: r[key], reverse=reverse) + missing


def _trials_cmd(args: argparse.Namespace) -> int:
    from nasframe.results import load_run
    from nasframe.trial import STATUSES

    run = load_run(args.run_dir)
    rows = run.rows()
    if args.status:
        bad = [s for s in args.status if s not in STATUSES]
        if bad:
            raise ConfigError(f"--status {bad[0]}: not a trial status; use one of "
                              f"{', '.join(STATUSES)}")
        rows = [r for r in rows if r["status"] in args.status]
    rows = _sorted(rows, args.sort, args.reverse)
    if args.limit is not None:
        rows = rows[: args.limit]
    _rows_out(rows, args.format, run.keys, f"{run.run_dir}: {len(rows)} trial(s)")
    return 0


def _front_cmd(args: argparse.Namespace) -> int:
    from nasframe.results import load_run

    run = load_run(args.run_dir)
    rows = [r for r in run.rows() if r["is_pareto"] or r["pick"]]
    rows = _sorted(rows, args.sort or run.keys[0], args.reverse)
    pick = run.pick_result
    title = f"{run.run_dir}: {sum(bool(r['is_pareto']) for r in rows)} on the front" + (
        f"; pick: trial {pick.trial.number} ({pick.rule})" if pick else "")
    _rows_out(rows, args.format, run.keys, title)
    return 0


def _status_cmd(args: argparse.Namespace) -> int:
    """Progress of a run, live or not: trials by status, running trials and their heartbeat,
    the budget, the front, and who holds the run."""
    import time

    from nasframe.lock import RunLock
    from nasframe.results import load_run
    from nasframe.store import TrialStore

    run = load_run(args.run_dir)
    store = TrialStore.open(args.run_dir, read_only=True)
    try:
        elapsed = float(store.get_meta("elapsed", 0.0))
        beat = store.get_meta("heartbeat")
        finished = store.get_meta("finished")
    finally:
        store.close()
    trials = run.trial_list()
    search = [t for t in trials if not t.is_reference]
    counts = {s: sum(t.status == s for t in trials) for s in ("complete", "infeasible", "pruned", "failed", "running")}
    budget = run.config.budget
    lock = RunLock(args.run_dir)
    holder = lock.holder()
    live = False
    if holder:
        import fcntl
        import os

        fd = os.open(lock.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            # locked; by the run itself, unless the process it names is gone (then what
            # holds the lock was left behind by it: the run is not running)
            from nasframe.lock import _alive

            pid = holder.get("pid")
            live = not (isinstance(pid, int) and not _alive(pid))
        finally:
            os.close(fd)
    now = time.time()
    a = run.analysis
    doc = {
        "run_dir": str(run.run_dir), "experiment": run.config.name,
        "state": "running" if live else ("finished" if finished and not counts["running"]
                                         else "stopped"),
        "finished_because": finished.get("because") if finished and not live else None,
        "holder": holder if live else None,
        "trials": {"search": sum(t.status != "running" for t in search),
                   "budget": budget.trials, "references": len(trials) - len(search), **counts},
        "elapsed_s": round(elapsed, 1), "time_budget_s": budget.time,
        "heartbeat_age_s": None if beat is None else round(now - beat, 1),
        "running": [{"number": t.number, "id": t.arch.id, "attempt": t.attempt,
                     "for_s": None if t.started is None else round(now - t.started, 1),
                     "heartbeat_age_s": None if t.heartbeat is None else round(now - t.heartbeat, 1),
                     "failure": t.failure} for t in trials if t.status == "running"],
        "front": int(a.pareto.sum()), "hypervolume": a.hypervolume,
    }
    if args.format == "json":
        print(json.dumps(doc, indent=1, default=str))
        return 0
    if args.format == "csv":
        flat = {k: v for k, v in doc.items() if k not in ("trials", "running", "holder")}
        flat.update({f"trials_{k}": v for k, v in doc["trials"].items()})
        flat["holder_pid"] = (doc["holder"] or {}).get("pid")
        _csv_out([flat])
        return 0
    t = doc["trials"]
    of = f" of {t['budget']}" if t["budget"] else ""
    state = (f"[green]running[/green] (pid {holder.get('pid')} on {holder.get('host')})" if live
             else f"[green]finished[/green] ({doc['finished_because']})"
             if doc["state"] == "finished" else "[yellow]stopped[/yellow] (resume continues it)")
    out.print(f"{doc['run_dir']} ({doc['experiment']}): {state}")
    out.print(f"search trials {t['search']}{of}; complete {t['complete']}, infeasible "
              f"{t['infeasible']}, pruned {t['pruned']}, "
              f"failed {t['failed']}, running {t['running']}; references {t['references']}",
              highlight=False)
    out.print(f"front {doc['front']}, hypervolume {doc['hypervolume']:.4g}; elapsed "
              f"{doc['elapsed_s']:.0f} s" + (f" of {budget.time:.0f} s" if budget.time else ""),
              highlight=False)
    for r in doc["running"]:
        age = r["heartbeat_age_s"]
        note = ("interrupted: runs again on resume" if r["failure"] == "interrupted" else
                f"heartbeat {age:.0f} s ago" if age is not None else "no heartbeat")
        if not live and r["failure"] != "interrupted":
            note += "; the run stopped: resume re-runs it"
        out.print(f"  trial {r['number']} ({r['id']}) attempt {r['attempt']}: {note}",
                  highlight=False)
    if not live and t["running"]:
        out.print(f"continue with: nasframe resume {doc['run_dir']}", highlight=False)
    return 0


# -- `nasframe analyse RUN_DIR`: proxies checked against measured latency --------------
def _analyse_cmd(args: argparse.Namespace) -> int:
    from nasframe.proxy_check import deploy_check_summary, proxy_check, write_proxy_check
    from nasframe.results import load_run

    run = load_run(args.run_dir)
    check = proxy_check(run, args.proxies, args.measured)
    deployed = deploy_check_summary(run)
    if not check.correlations and not deployed:
        what = []
        if not check.measured:
            what.append("no measured latency: add an objective with a measured latency to the "
                        "experiment, e.g. `- {name: latency, params: {backend: onnxruntime}}` "
                        "(searched) or as a constraint, and run again (`nasframe plugins latency`)")
        if not check.proxies:
            what.append("no proxy objective: add one, e.g. `- {name: gmacs}` or `- {name: params}`")
        if not what:
            what.append("no complete trial has both a proxy and a measured latency")
        raise ConfigError(*(f"{args.run_dir}: nothing to analyse: {w}" for w in what))
    rows = [{"proxy": c.proxy, "measured": c.measured, "n": c.n, "tau": c.tau,
             "p_value": c.p_value, "measured_on": c.measured_device} for c in check.correlations]
    if args.format == "json":
        doc = check.to_dict()
        if deployed:
            doc["deploy_checks"] = [d.to_dict() for d in deployed]
        print(json.dumps(doc, indent=1, default=str))
    elif args.format == "csv":
        _csv_out(rows)
    else:
        if check.correlations:
            table = Table(title=f"{args.run_dir}: Kendall tau, proxy vs measured "
                          f"(complete trials)")
            for col in ("proxy", "measured", "n", "tau", "p-value", "measured on"):
                table.add_column(col)
            for c in check.correlations:
                table.add_row(c.proxy, c.measured, str(c.n), f"{c.tau:.3f}", f"{c.p_value:.2g}",
                              c.measured_device)
            out.print(table)
        _print_deploy_checks(deployed)
    if not args.no_plot and check.correlations:
        js, png = write_proxy_check(check, _output(args) or args.run_dir)
        console.print(f"wrote {png} and {js}", highlight=False)
    return 0


def _print_deploy_checks(summaries) -> None:
    """``analyse``: the deploy checks its objectives recorded (e.g. the NPU check)."""
    if not summaries:
        return
    table = Table(title="deploy checks recorded by the objectives (finished trials)")
    for col in ("check", "target", "trials", "passed", "refused op types (trials)",
                "compile s (median)", "values: min / median / max"):
        table.add_column(col)
    for d in summaries:
        table.add_row(d.check, d.target, str(d.trials), str(d.passed),
                      ", ".join(f"{op} ({n})" for op, n in d.refused_ops.items()) or "none",
                      f"{d.compile_s:.1f}",
                      "; ".join(f"{k} {a:.4g} / {b:.4g} / {c:.4g}" for k, (a, b, c) in
                                d.values.items()))
    Console(soft_wrap=False, width=max(out.width, 160) if not out.is_terminal else None).print(table)


def _csv_out(rows: list[dict[str, Any]], cols: list[str] | None = None) -> None:
    import csv

    cols = cols or (list(rows[0]) if rows else [])
    w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})


FORMATS_OUT = ("table", "json", "csv")
_EPILOG = "exit codes: 0 ok, 2 a usage or configuration error, 1 a failure while running"


def _sub(sub, common, name: str, help_: str, description: str, examples: str, **kw):
    """A subcommand with a description and examples in its --help."""
    return sub.add_parser(name, parents=[common], help=help_, description=description,
                          epilog=f"examples:\n{examples}\n\n{_EPILOG}",
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def _add_format(p, default: str = "table") -> None:
    p.add_argument("-f", "--format", choices=FORMATS_OUT, default=default,
                   type=lambda v: {"text": "table"}.get(v, v),
                   help="table (for people), json or csv (for programs); default: %(default)s")


def _add_old_out(p) -> None:
    """``--out`` where the command's product now goes to ``-o/--output`` (kept, hidden)."""
    p.add_argument("--out", dest="old_out", help=argparse.SUPPRESS)


def _add_analyse(sub, common) -> None:
    for name in ("analyse",):
        p = _sub(sub, common, name, "proxies (params, GMACs, ...) vs measured latency: Kendall tau",
                 "How well each proxy objective of a run (provenance: proxy) ranks each measured "
                 "latency (provenance: measured): Kendall tau and its p-value per pair, with one "
                 "scatter plot per pair in proxy_check.png.",
                 "  nasframe analyse runs/ens_device\n"
                 "  nasframe analyse runs/ens_device --proxies gmacs params -f json",
                 aliases=["analyze"])
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument("--proxies", nargs="+", metavar="KEY", help="proxy objectives (default: "
                       "those whose provenance is proxy)")
        p.add_argument("--measured", nargs="+", metavar="KEY", help="measured objectives "
                       "(default: the measured latencies)")
        _add_format(p)
        p.add_argument("-o", "--output", metavar="DIR",
                       help="write proxy_check.png/.json here (default: RUN_DIR)")
        _add_old_out(p)
        p.add_argument("--no-plot", action="store_true", help="print only")
        p.set_defaults(fn=_analyse_cmd)


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    # after the subcommand too; SUPPRESS keeps it from resetting a `nasframe --debug CMD`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    common.add_argument("--allow-code", action="append", metavar="PATTERN", default=None,
                        help="let the experiment name code to import: an Optuna sampler or NNI "
                             "tuner class path, an OptunaHub package ('optunahub:*'); shell-style "
                             "pattern, repeatable (also NASFRAME_ALLOW_CODE)")
    parser = argparse.ArgumentParser(
        prog="nasframe", parents=[top], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plugin-based neural architecture search for models that must run on a "
                    "phone.\n\nConventions: RUN_DIR / --out DIR is a run directory; -o/--output "
                    "is where a command writes its product; -f/--format is table, json or csv.",
        epilog="start with: nasframe run examples/quickstart.yaml   (`nasframe COMMAND -h` for "
               "each command)\n" + _EPILOG)
    parser.add_argument("--version", action="version", version=f"nasframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(sub, common, "plugins", "components by kind; NAME: one component's params",
             "The installed components (search spaces, objectives, strategies, executors, "
             "latency backends), each with its plugin, version, status (ok, or the pip command "
             "that adds what it needs) and what it is. Filter by kind or by a name pattern; "
             "NAME alone describes one component and its params.",
             "  nasframe plugins\n  nasframe plugins objective\n  nasframe plugins 'sd*'\n"
             "  nasframe plugins latency            # one component: params, capabilities\n"
             "  nasframe plugins -f json")
    p.add_argument("name", nargs="?", metavar="NAME|KIND|PATTERN",
                   help="a component to describe, a kind (search_space, objective, strategy, "
                        "executor, latency_backend) or a pattern such as 'sd*'")
    _add_format(p)
    p.set_defaults(fn=_plugins_cmd)

    p = _sub(sub, common, "validate", "check an experiment file",
             "Checks an experiment file against the installed plugins: every problem at once, "
             "with its field path, the bad value and the fix (exit 2), or one line saying what "
             "would run (exit 0). Nothing is trained, evaluated or imported.",
             "  nasframe validate examples/quickstart.yaml")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.set_defaults(fn=_validate_cmd)

    p = _sub(sub, common, "run", "run a search, then export",
             "Runs the search to the end of its budget with a progress bar, then exports "
             "trials.csv, pareto.json, the plots and front/<id>.yaml into the run directory. "
             "Ctrl-C or SIGTERM stop it with every finished trial stored; `nasframe resume` "
             "continues it.",
             "  nasframe run examples/quickstart.yaml\n"
             "  nasframe run examples/quickstart.yaml --out runs/try2 --quiet")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.add_argument("--out", metavar="DIR",
                   help="the run directory (default: the experiment's `output`, else runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-export", action="store_true", help="do not export when done")
    p.set_defaults(fn=_run_cmd)

    p = _sub(sub, common, "resume", "continue a stopped or killed run",
             "Continues a run stopped by Ctrl-C, SIGTERM, kill -9 or its time budget, with the "
             "same strategy state. Given the edited experiment file, its budget, executor, "
             "trial_timeout, max_attempts and max_failure_fraction apply; other changes are "
             "refused.",
             "  nasframe resume runs/quickstart\n"
             "  nasframe resume runs/quickstart examples/quickstart.yaml   # with a larger budget\n"
             "  nasframe resume runs/quickstart --retry-failed")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("experiment", nargs="?", metavar="EXP.yaml",
                   help="the experiment file, edited: its budget, time, executor, "
                        "trial_timeout, max_attempts and max_failure_fraction apply; "
                        "other changes are refused")
    p.add_argument("--retry-failed", action="store_true", help="run every failed trial once more")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-export", action="store_true", help="do not export when done")
    p.set_defaults(fn=_resume_cmd)

    p = _sub(sub, common, "evaluate", "evaluate one architecture, print JSON",
             "Prepares what the objectives need (cached in the run directory) and evaluates one "
             "architecture: a reference architecture of the space by name, or a YAML file such "
             "as RUN_DIR/front/<id>.yaml. Prints its values with their provenance as JSON.",
             "  nasframe evaluate examples/ens_denoise.yaml --arch teacher\n"
             "  nasframe evaluate examples/quickstart.yaml --arch runs/quickstart/front/pick.yaml")
    p.add_argument("experiment", metavar="EXP.yaml")
    p.add_argument("--arch", required=True, metavar="NAME|FILE",
                   help="a reference architecture name or a YAML file (e.g. front/<id>.yaml)")
    p.add_argument("--out", metavar="DIR", help="the run directory whose prepared weights are "
                   "used and cached (default: the experiment's `output`, else runs/<name>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_evaluate_cmd)

    for name, help_, fn in (("trials", "print a run's trials", _trials_cmd),
                            ("front", "print a run's Pareto front (and pick)", _front_cmd)):
        p = _sub(sub, common, name, help_,
                 "Every trial of a run (live or stopped): number, status, origin, id, values "
                 "with their provenance, feasibility, errors and decisions." if name == "trials"
                 else "The run's Pareto front and the strategy's pick.",
                 f"  nasframe {name} runs/quickstart\n"
                 f"  nasframe {name} runs/quickstart --sort quick_psnr --reverse"
                 + ("\n  nasframe trials runs/quickstart --status failed -f csv"
                    if name == "trials" else "\n  nasframe front runs/quickstart -f json"))
        p.add_argument("run_dir", metavar="RUN_DIR")
        _add_format(p)
        p.add_argument("--sort", metavar="COLUMN", help="sort by a column (e.g. an objective)")
        p.add_argument("--reverse", action="store_true", help="sort descending")
        if name == "trials":
            p.add_argument("--status", nargs="+", metavar="STATUS",
                           help="only trials with these statuses (complete, infeasible, "
                                "pruned, failed, running)")
            p.add_argument("--limit", type=int, metavar="N", help="at most N rows")
        p.set_defaults(fn=fn)

    p = _sub(sub, common, "status", "progress of a run (live, stopped or finished)",
             "Whether a run is running (and which process holds it), stopped (resume continues "
             "it) or finished; trials by status, running trials and their heartbeat, the "
             "budget, the front.",
             "  nasframe status runs/quickstart\n  nasframe status runs/quickstart -f json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_format(p)
    p.set_defaults(fn=_status_cmd)

    p = _sub(sub, common, "export", "write trials.csv, pareto.json, plots, front/",
             "Writes a run's results: trials.csv, pareto.json, pareto.png, hypervolume.png and "
             "front/<id>.yaml per front member (and pick.yaml), into the run directory or "
             "-o DIR. Only files a previous export wrote are ever replaced. --models also "
             "exports each front member as a deployable model, checked against PyTorch.",
             "  nasframe export runs/quickstart\n  nasframe export runs/quickstart -o report/\n"
             "  nasframe export runs/ens_device --models onnx\n"
             "  nasframe export runs/quickstart --optuna sqlite:///study.db")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("-o", "--output", metavar="DIR", help="write here instead of RUN_DIR")
    _add_old_out(p)
    p.add_argument("--models", nargs="+", metavar="FORMAT",
                   help="also export every front member and the pick: onnx, torchscript, "
                        "exported_program (front/<id>.onnx, checked against PyTorch)")
    p.add_argument("--part", metavar="PART", help="with --models: this model part of the space")
    _add_check_args(p)
    p.add_argument("--optuna", metavar="STORAGE_URL",
                   help="write the run as an Optuna study instead (e.g. sqlite:///study.db)")
    p.add_argument("--study-name", help="with --optuna: the study's name (default: the experiment's)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --optuna: replace a study of the same name")
    p.set_defaults(fn=_export_cmd)

    p = _sub(sub, common, "dashboard", "browse a run in optuna-dashboard, live (on localhost)",
             "Serves a run in optuna-dashboard on localhost: every trial with its values, the "
             "front and the pick (user attrs `front` and `pick`, and the study's note). It "
             "follows the run: a running search's new trials appear in the page. It only "
             "reads the run.",
             "  nasframe dashboard runs/quickstart\n  nasframe dashboard runs/quickstart --port 0")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--port", type=int, default=8080,
                   help="port to listen on (default: %(default)s; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    p.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS",
                   help="read the run again at most this often, when it changed "
                        "(default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(fn=_dashboard_cmd)
    _add_analyse(sub, common)
    _add_export_parsers(sub, common)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line on stderr (not Python's two-line form with source)."""
    console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from nasframe import trust

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.showwarning = _show_warning
    if getattr(args, "allow_code", None):
        trust.allow_code(*args.allow_code)
    try:
        with _terminate_on_sigterm():
            return args.fn(args)
    except BrokenPipeError:
        # the reader went away (`nasframe trials RUN | head`): stop quietly
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
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
    except Terminated:
        console.print("[yellow]stopped (SIGTERM)[/yellow]")
        return 143
    except Exception as err:  # an unexpected failure: one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            console.print(f"error: {type(err).__name__}: {err} (run with --debug for the "
                          "traceback)", style="red", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
