"""Reading YAML that a user (or anyone) wrote: safely, bounded, with short errors.

Every YAML file nasframe reads (experiments, ``--arch`` files) goes through
:func:`load_yaml_file`. On top of ``yaml.SafeLoader`` (no Python objects
are ever constructed) it bounds what a hostile or broken file can cost:

* size: at most :data:`MAX_BYTES` bytes, UTF-8 text without NUL bytes;
* nesting: at most :data:`MAX_DEPTH` levels of mappings and sequences,
  checked on the event stream (PyYAML's composer would recurse and crash);
* aliases: the document, with every alias expanded, may hold at most
  :data:`MAX_NODES` values (an "alias bomb" of a few hundred bytes otherwise
  expands to millions), checked on the node graph before anything is built;
* duplicate keys in a mapping are an error (YAML keeps the last one silently).

Every failure is a :class:`~nasframe.errors.ConfigError` of one short line
naming the file, the place and the fix; a message never quotes more than a
few characters of the input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nasframe.errors import ConfigError

#: the largest YAML file nasframe reads
MAX_BYTES = 1_000_000
#: the deepest nesting of mappings and sequences
MAX_DEPTH = 64
#: the most values a document may hold with its aliases expanded
MAX_NODES = 100_000


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:   # an unhashable key: let SafeLoader report it
                break
            if first is not None:
                raise _DuplicateKey(None, None, f"duplicate key {_short(key)} at "
                                    f"{_where(key_node.start_mark)} (first at line "
                                    f"{first.line + 1}); keep one of them", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{source}: nesting deeper than {MAX_DEPTH} levels at "
                                  f"{_where(event.start_mark)}; an experiment needs a few levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expansion(root: yaml.Node | None, source: str) -> None:
    """Count the values of the document with aliases expanded, without expanding them."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value))
        if children_done:
            total = 1 + sum(sizes.get(id(k), 1) for k in kids)
            if total > MAX_NODES:
                raise ConfigError(f"{source}: expands to more than {MAX_NODES:,} values through "
                                  f"aliases (near {_where(node.start_mark)}); a YAML alias bomb? "
                                  "write the values out or use fewer aliases")
            sizes[id(node)] = total
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse ``text`` (from ``source``, for messages) with every bound checked."""
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            _check_expansion(root, source)
            return None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML at {_where(mark)}: {problem[:200]}; fix the "
                          "syntax there") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read; an experiment needs a few "
                          "levels") from None


def load_yaml_file(path: str | Path, what: str = "file") -> Any:
    """Read and parse a YAML file; a ConfigError naming ``path`` for anything wrong with it."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(f"{source}: no such {what}; check the path")
    if not path.is_file():
        raise ConfigError(f"{source}: not a {what} (a directory?); give a YAML file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{source}: {size:,} bytes, more than the {MAX_BYTES:,} a YAML {what} "
                          "may have; is it the right file?")
    data = path.read_bytes()
    if b"\0" in data:
        raise ConfigError(f"{source}: a binary file (it holds NUL bytes), not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    return load_yaml_text(text, source)
