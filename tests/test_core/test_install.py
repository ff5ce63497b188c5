"""The installed distribution: top-level names under the project's name, a lean base
install, and built-ins whose extra is missing listed as unavailable (never a traceback)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from conftest import ROOT

#: what each extra's absence takes away (module blocked -> components unavailable)
EXTRAS = {
    "fvcore": ("macs", ["objective\tgmacs"]),
    "skimage": ("restoration", ["search space\thybrid_unet", "search space\tquad",
                                "objective\tquick_psnr", "objective\tssim"]),
    "diffusers": ("diffusion", ["search space\tsd_unet"]),
    "botorch": ("bo", ["strategy\teps_bo"]),
    "distributed": ("dask", ["executor\tdask"]),
    "onnxruntime_qnn": ("npu", ["objective\tnpu_compiles", "objective\tnpu_fidelity",
                                "deploy check\tnpu"]),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (the source tree stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    out = tmp / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("nasframe-*.whl")
    return whl


def test_every_installed_top_level_name_starts_with_the_project_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top and all(t.startswith("nasframe") for t in top), sorted(top)
    assert {"nasframe", "nasframe_search_spaces", "nasframe_objectives", "nasframe_plugins"} <= top
    # no generic name escapes, and every package of the repo is inside the wheel
    assert not top & {"plugins", "objectives", "search_spaces"}
    for folder, package in (("search_spaces", "nasframe_search_spaces"),
                            ("objectives", "nasframe_objectives"), ("plugins", "nasframe_plugins")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{rel}" in names, f"{folder}/{rel} is not installed"
    assert "nasframe/py.typed" in names      # the Python API is typed (PEP 561)


def test_the_base_install_is_what_the_core_needs(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    requires = msg.get_all("Requires-Dist") or []
    base = [r for r in requires if "extra ==" not in r]
    heavy = ("diffusers", "numba", "scikit-image", "fvcore", "botorch", "distributed", "mamba")
    assert not [r for r in base if r.startswith(heavy)], base
    for extra in ("macs", "restoration", "diffusion", "bo", "dask", "quad", "npu", "all", "dev"):
        assert extra in (msg.get_all("Provides-Extra") or []), extra


def _cli_without(modules: list[str], *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a process where importing ``modules`` fails (as if not installed)."""
    code = ("import sys\n"
            f"for m in {modules!r}:\n    sys.modules[m] = None\n"
            "from nasframe.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_a_builtin_whose_extra_is_missing_is_listed_with_the_fix():
    res = _cli_without(list(EXTRAS), "plugins")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stdout.splitlines()
    for module, (extra, components) in EXTRAS.items():
        for comp in components:
            line = next(x for x in lines if x.startswith(comp + "\t"))
            assert f"unavailable: needs {module}" in line and f"nasframe[{extra}]" in line, line
    ok = [x for x in lines if x.split("\t")[4:5] == ["ok"]]      # the status column
    assert any(x.startswith("objective\tparams\t") for x in ok)
    assert any(x.startswith("strategy\trandom\t") for x in ok)


def test_an_experiment_naming_an_unavailable_component_is_exit_2(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("search_space: {name: hybrid_unet, params: {preset: tiny}}\n"
                   "objectives: [{name: params}]\nbudget: {trials: 2}\n")
    res = _cli_without(["skimage"], "validate", str(exp))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert ("search_space: search space 'hybrid_unet' needs skimage, which is not installed; "
            "install with: pip install 'nasframe[restoration]'") in res.stderr


def _cli_without_distribution(dist: str, module: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI where distribution ``dist`` (module ``module``) is not installed at all: its
    metadata and its import are gone (as after ``pip install --no-deps nni``)."""
    code = ("import sys, importlib.metadata as md\n"
            f"sys.modules[{module!r}] = None\n"
            "_version, _requires = md.version, md.requires\n"
            "def version(name):\n"
            f"    if name.lower() == {dist!r}: raise md.PackageNotFoundError(name)\n"
            "    return _version(name)\n"
            "md.version = version\n"
            "from nasframe.cli import main\n"
            f"sys.exit(main({list(args)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_nni_whose_own_dependency_is_missing_is_unavailable_with_the_reason(tmp_path):
    """nni installed without colorama (a --no-deps install): `plugins` says so with the fix,
    from the package metadata, without importing nni; validate is exit 2 with the reason
    (not a raw ModuleNotFoundError)."""
    pytest.importorskip("nni")
    res = _cli_without_distribution("colorama", "colorama", "plugins", "strategy")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("strategy\tnni\t"))
    assert ("unavailable: needs nni, which is installed without colorama, which nni requires "
            "(installed with --no-deps?); install with: pip install 'nasframe[nni]'") in line, line
    assert any(x.startswith("strategy\trandom\t") and x.split("\t")[4] == "ok"
               for x in res.stdout.splitlines())
    exp = tmp_path / "exp.yaml"
    exp.write_text("search_space: {name: conv_denoiser}\nobjectives: [{name: params}]\n"
                   "strategy: {name: nni, params: {tuner: TPE}}\nbudget: {trials: 2}\n")
    res = _cli_without_distribution("colorama", "colorama", "validate", str(exp))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "strategy: strategy 'nni' needs nni, which is installed without colorama" in res.stderr
    # installed, but its import fails for another reason: found when the component is made
    res = _cli_without(["colorama"], "validate", str(exp))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert ("needs nni, which is installed but its import fails (ModuleNotFoundError"
            in res.stderr), res.stderr


def _runtime_imports(path: Path) -> set[str]:
    """``nasframe.*`` modules ``path`` imports at run time (any depth; TYPE_CHECKING blocks skipped)."""
    import ast

    tree = ast.parse(path.read_text())
    out: set[str] = set()

    def visit(node, skip: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, skip)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "nasframe":
                out.update(f"nasframe.{a.name}" for a in node.names)
            elif node.module.startswith("nasframe."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nasframe."))
        for child in ast.iter_child_nodes(node):
            visit(child, skip)

    visit(tree, False)
    return out


def test_the_core_has_no_import_cycles():
    import networkx as nx

    core = ROOT / "nasframe"
    modules = {f"nasframe.{p.stem}": p for p in core.glob("*.py") if p.stem != "__init__"}
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        for dep in _runtime_imports(path):
            if dep in modules and dep != name:
                g.add_edge(name, dep)
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], cycles


def test_the_core_quickstart_runs_without_any_extra(tmp_path):
    """examples/quickstart_core.yaml is the README's first run for a bare install."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "quickstart_core.yaml").read_text())
    doc["budget"] = {"trials": 3}
    exp = tmp_path / "core.yaml"
    exp.write_text(yaml.safe_dump(doc))
    res = _cli_without(list(EXTRAS), "run", str(exp), "--out", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "done" in res.stderr and (tmp_path / "run" / "pareto.json").exists()
