"""The one error hierarchy of nasframe.

The CLI maps :class:`ConfigError` (and its subclasses) to exit code 2 with a
one-line message and no traceback; every other :class:`NasframeError` is a
failure while running (exit code 1). A message names the bad value, where it
came from, and the fix.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class NasframeError(Exception):
    """Base of every error nasframe raises on purpose."""


class ConfigError(NasframeError):
    """Bad user input: an experiment file, a CLI argument, a plugin parameter.

    ``problems`` holds one line per problem; ``str(err)`` joins them.
    """

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))


class InvalidParams(ConfigError, ValueError):
    """A component's params failed validation (also a ValueError for Python callers)."""


class PluginError(ConfigError):
    """A plugin registered something invalid (wrong type, duplicate name)."""


class RunError(NasframeError):
    """A run could not continue (too many failures, a broken run directory)."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM): unwinds like KeyboardInterrupt, so that
    the run saves its state, stops its workers and releases its lock on the way out."""


class EvaluationError(NasframeError):
    """An objective could not evaluate a candidate."""


def visible(text: str) -> str:
    """``text`` with every character that would not show as itself escaped (invisible,
    control and non-ASCII look-alike characters: ``tri\\u200bals``, ``\\u0430``)."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if (c.isascii() and c.isprintable()) else c.encode("unicode_escape").decode()
                   for c in text)


def _odd_chars(text: str) -> str:
    import unicodedata

    odd = [c for c in dict.fromkeys(str(text)) if not (c.isascii() and c.isprintable())]
    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in odd[:3])


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` when a close choice exists, else ``""``. A value
    with invisible or look-alike characters is shown escaped, naming them."""
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    if not close and len(str(value)) >= 3:   # a part of a name: psnr -> quick_psnr
        low = str(value).lower()
        parts = sorted((c for c in choices if low in str(c).lower()), key=lambda c: len(str(c)))
        close = parts[:1]
    if not close:
        odd = _odd_chars(value)
        return f"; '{visible(value)}' holds {odd}" if odd else ""
    odd = _odd_chars(value)
    if odd:
        return (f"; '{visible(value)}' holds {odd}; did you mean '{close[0]}' (plain "
                "characters)?")
    return f"; did you mean '{close[0]}'?"


def unknown_name(kind: str, value: str, choices: Iterable[str], where: str | None = None,
                 hints: Iterable[str] = ()) -> str:
    """A message for an unknown component name, listing what is available (``hints``: how
    to say a name from another tool here)."""
    choices = sorted(choices)
    loc = f"{where}: " if where else ""
    avail = ", ".join(choices) if choices else "none (is the plugin installed?)"
    hints = list(hints)
    if hints:
        return (f"{loc}unknown {kind} '{visible(value)}'; here that is {' or '.join(hints)}; "
                f"available: {avail}")
    return f"{loc}unknown {kind} '{visible(value)}'{did_you_mean(value, choices)} available: {avail}"
