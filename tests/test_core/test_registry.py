import abc

import pytest

from typing import Literal

from nasframe import Field, Objective, Params, PluginError, SearchSpace, hookimpl
from nasframe.params import Int
from nasframe.errors import ConfigError
from nasframe.plugins import Plugins
from nasframe.registry import Registry
from nasframe.testing import ToySpace


class Good(Objective):
    name = "good"

    def evaluate(self, candidate, ctx):
        return 1.0


def _reg(plugin="p1"):
    reg = Registry("objective", Objective)
    reg._current_plugin = (plugin, "1.0")
    return reg


def test_registry_rejects_wrong_type_abstract_and_nameless():
    reg = _reg()
    with pytest.raises(PluginError, match="not a subclass"):
        reg.add(ToySpace)

    class Abstract(Objective):
        name = "abstract"

    with pytest.raises(PluginError, match="abstract"):
        reg.add(Abstract)

    class Nameless(Good):
        name = ""

    with pytest.raises(PluginError, match="without a name"):
        reg.add(Nameless)


def test_duplicate_names_name_both_plugins():
    reg = _reg("first-plugin")
    reg.add(Good)
    reg._current_plugin = ("second-plugin", "2.0")

    class Other(Good):
        name = "good"

    with pytest.raises(PluginError) as err:
        reg.add(Other)
    assert "first-plugin" in str(err.value) and "second-plugin" in str(err.value)


def test_unknown_name_lists_choices_and_suggests():
    reg = _reg()
    reg.add(Good)
    with pytest.raises(ConfigError) as err:
        reg.get("god", "objectives[0]")
    msg = str(err.value)
    assert "objectives[0].name" in msg and "did you mean 'good'" in msg and "available: good" in msg


def test_unknown_params_are_config_errors():
    reg = _reg()
    reg.add(Good)
    with pytest.raises(ConfigError, match=r"objectives\[0\].params.nope: unknown field \(got 1\); "
                                          "this component takes no params"):
        reg.create("good", {"nope": 1}, where="objectives[0]")


class Typed(Objective):
    name = "typed"

    class Params(Params):
        steps: Int = Field(5, ge=0, le=100)
        """Steps."""
        mode: Literal["a", "b"] = "a"

    def evaluate(self, candidate, ctx):
        return float(self.params.steps)


def test_params_are_validated_with_path_value_fix_and_did_you_mean():
    reg = _reg()
    reg.add(Typed)
    obj = reg.create("typed", {"steps": 7})
    assert isinstance(obj.params, Typed.Params) and obj.params.steps == 7
    with pytest.raises(ConfigError) as err:
        reg.create("typed", {"stpes": 3, "mode": "c", "steps": True}, where="objectives[1]")
    lines = err.value.problems
    assert "objectives[1].params.stpes: unknown field; did you mean 'steps'? (got 3); allowed here: " \
           "steps, mode" in lines
    assert any(line.startswith("objectives[1].params.mode: Input should be 'a' or 'b' (got 'c')")
               for line in lines)
    assert any(line.startswith("objectives[1].params.steps: Input should be a valid integer "
                               "(got True); the default is 5") for line in lines)
    with pytest.raises(ConfigError, match=r"params.steps: Input should be less than or equal to 100"):
        Typed(steps=101)                          # direct construction validates the same way


def test_a_component_without_a_params_model_is_refused():
    reg = _reg()

    class Untyped(Good):
        name = "untyped"
        Params = dict

    with pytest.raises(PluginError, match="not a subclass of nasframe.params.Params"):
        reg.add(Untyped)


def test_a_component_whose_dependency_is_missing_is_listed_unavailable(monkeypatch):
    import sys

    class NeedsIt(Good):
        name = "needs_it"
        dependencies = ("nasframe_no_such_module",)
        install_hint = "pip install 'nasframe[it]'"

    reg = _reg()
    reg.add(NeedsIt)
    assert reg.entry("needs_it").missing() == ["nasframe_no_such_module"]
    with pytest.raises(ConfigError, match=r"objectives\[0\]: objective 'needs_it' needs "
                                          r"nasframe_no_such_module, which is not installed; "
                                          r"install with: pip install 'nasframe\[it\]'"):
        reg.create("needs_it", {}, where="objectives[0]")
    monkeypatch.setitem(sys.modules, "json", None)     # sys.modules[name] = None: import fails
    NeedsIt.dependencies = ("json",)
    assert reg.entry("needs_it").missing() == ["json"]


def test_a_component_whose_dependency_fails_to_import_is_unavailable_with_the_reason(
        tmp_path, monkeypatch):
    """Installed (find_spec finds it) but its import raises, e.g. a package installed
    without one of its own dependencies: unavailable, with the error and the fix."""
    (tmp_path / "nasframe_half_installed.py").write_text(
        "import nasframe_its_own_dependency_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class NeedsHalf(Good):
        name = "needs_half"
        dependencies = ("json", "nasframe_half_installed")
        install_hint = "pip install 'nasframe[half]'"

    reg = _reg()
    reg.add(NeedsHalf)
    entry = reg.entry("needs_half")
    assert entry.missing() == []              # listing: installed (no metadata says otherwise)
    assert entry.missing(deep=True) == ["nasframe_half_installed"]   # making it: imported
    why = ("needs nasframe_half_installed, which is installed but its import fails "
           "(ModuleNotFoundError: No module named 'nasframe_its_own_dependency_is_missing'); "
           "install with: pip install 'nasframe[half]'")
    assert entry.unavailable(deep=True) == why
    with pytest.raises(ConfigError) as err:
        reg.create("needs_half", {}, where="strategy")
    assert str(err.value) == f"strategy: objective 'needs_half' {why}"


def test_bases_are_real_abcs():
    for base in (SearchSpace, Objective):
        assert isinstance(base, abc.ABCMeta)
        with pytest.raises(TypeError):
            base()


class _Broken:
    @hookimpl
    def register_objectives(self, registry):
        raise RuntimeError("boom")


class _Fine:
    @hookimpl
    def register_objectives(self, registry):
        registry.add(Good)


class _Dup:
    @hookimpl
    def register_objectives(self, registry):
        class Again(Good):
            name = "good"
        registry.add(Again)


def test_broken_plugin_is_reported_and_others_work():
    plugins = Plugins()
    plugins.register(_Broken(), "broken")
    plugins.register(_Fine(), "fine")
    plugins.register(_Dup(), "dup")
    assert "good" in plugins.objectives
    assert plugins.objectives.entry("good").plugin == "fine"
    failed = {f.plugin: f.error for f in plugins.failures}
    assert "boom" in failed["broken"]
    assert "fine" in failed["dup"] and "dup" in failed["dup"]


def test_builtins_arrive_through_entry_points(monkeypatch):
    monkeypatch.delenv("NASFRAME_PLUGINS", raising=False)
    monkeypatch.delenv("NASFRAME_DISABLE_PLUGINS", raising=False)
    plugins = Plugins()
    plugins.load_entry_points()
    assert {"random", "grid"} <= set(plugins.strategies.names())
    assert plugins.strategies.entry("random").plugin == "builtin_plugins"
    assert "conv_denoiser" in plugins.search_spaces
    assert {"params", "gmacs", "latency"} <= set(plugins.objectives.names())


@pytest.mark.parametrize("env,expect_random", [
    ({"NASFRAME_PLUGINS": "none"}, False),
    ({"NASFRAME_PLUGINS": "builtin_plugins"}, True),
    ({"NASFRAME_DISABLE_PLUGINS": "builtin_plugins"}, False),
])
def test_environment_limits_plugins(monkeypatch, env, expect_random):
    monkeypatch.delenv("NASFRAME_PLUGINS", raising=False)
    monkeypatch.delenv("NASFRAME_DISABLE_PLUGINS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugins = Plugins()
    plugins.load_entry_points()
    assert ("random" in plugins.strategies) is expect_random
    if env.get("NASFRAME_PLUGINS") == "builtin_plugins":
        assert "conv_denoiser" not in plugins.search_spaces


def test_core_imports_no_plugin_folder():
    import pathlib
    import re

    core = pathlib.Path(__file__).resolve().parents[2] / "nasframe"
    pattern = re.compile(r"^\s*(from|import)\s+(nasframe_search_spaces|nasframe_objectives|nasframe_plugins|search_spaces|objectives|plugins)([. ]|$)", re.M)
    offenders = [p.name for p in core.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


class _HalfBroken:
    @hookimpl
    def register_search_spaces(self, registry):
        registry.add(ToySpace)

    @hookimpl
    def register_objectives(self, registry):
        raise ImportError("missing dependency")


def test_a_failed_plugin_adds_nothing():
    plugins = Plugins()
    plugins.register(_HalfBroken(), "half")
    assert "toy" not in plugins.search_spaces
    assert [f.plugin for f in plugins.failures] == ["half"] and "missing dependency" in plugins.failures[0].error
