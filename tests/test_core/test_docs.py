"""The plugin guide documents every hook, and its quoted code matches the real files."""
from __future__ import annotations

import inspect
import re

import pytest

from conftest import ROOT
from nasframe import hookspecs

DOC = ROOT / "docs" / "plugins.md"

#: a fenced block whose first line is ``# <path>`` quotes that file; ``# ...`` separates excerpts
_BLOCK = re.compile(r"^```[\w-]*\n(.*?)^```", re.S | re.M)
_SOURCE = re.compile(r"^# ((?:nasframe|examples|search_spaces|objectives|plugins)/\S+)$")


def hook_specs() -> list[str]:
    """Names of the functions in ``nasframe.hookspecs`` marked with ``@hookspec``."""
    marker = f"{hookspecs.PROJECT}_spec"  # where pluggy's HookspecMarker stores its options
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if hasattr(fn, marker))


def quoted_excerpts() -> list[tuple[str, str]]:
    """``(path, excerpt)`` for every file excerpt quoted in the guide."""
    out = []
    for block in _BLOCK.findall(DOC.read_text()):
        first, _, body = block.partition("\n")
        m = _SOURCE.match(first)
        if m:
            for chunk in re.split(r"^# \.\.\.\n", body, flags=re.M):
                out.append((m.group(1), chunk.strip("\n")))
    return out


def test_the_hook_specs_are_found():
    assert hook_specs() == ["register_deploy_checks", "register_executors",
                            "register_latency_backends",
                            "register_objectives", "register_op_handles", "register_search_spaces",
                            "register_strategies"]


@pytest.mark.parametrize("hook", hook_specs())
def test_the_plugin_guide_documents_every_hook(hook):
    text = DOC.read_text()
    assert re.search(rf"\b{hook}\b", text), f"docs/plugins.md does not mention the hook `{hook}`"


def test_the_plugin_guide_names_its_environment_variables_and_contracts():
    text = DOC.read_text()
    for word in ("NASFRAME_PLUGINS", "NASFRAME_DISABLE_PLUGINS", "NASFRAME_PLUGIN_MODULES",
                 "nasframe plugins", "nasframe plugins NAME", "SearchSpaceContract",
                 "ObjectiveContract", "StrategyContract", "ExecutorContract", "StrategyDriver"):
        assert word in text, word


def test_code_quoted_in_the_plugin_guide_matches_the_files():
    excerpts = quoted_excerpts()
    assert len({path for path, _ in excerpts}) >= 8, "expected excerpts from the example and the core"
    for path, excerpt in excerpts:
        source = ROOT / path
        assert source.is_file(), f"docs/plugins.md quotes {path}, which does not exist"
        assert excerpt in source.read_text(), f"docs/plugins.md: this excerpt of {path} is stale:\n{excerpt}"


def test_the_plugin_guide_names_every_core_capability():
    from nasframe.capabilities import CORE_CAPABILITIES

    text = DOC.read_text()
    for cap in CORE_CAPABILITIES:
        assert f"`{cap.__name__}`" in text, cap.__name__
