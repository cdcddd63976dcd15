"""Path patterns, compiled once into one matcher.

A pattern is one of:

- a plain string, matched exactly: ``"/export"``;
- a string with ``*``, where ``*`` matches any run of characters, ``/``
  included: ``"/reports/*"``;
- a string with ``<...>``, a werkzeug rule with its converters:
  ``"/export/<int:id>"`` matches ``/export/12`` and not ``/export/abc``;
- a werkzeug ``Rule``, whose ``methods`` (when set) narrow the methods it
  marks; a rule bound to a ``Map`` (as Flask's are) is matched with that
  map's converters, so an app's own converters work in its rules;
- a compiled regular expression, which must match the whole path.

Whatever the number of patterns, a path costs one set lookup, one regex
match, and a werkzeug map lookup only when the path starts like one of the
rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Union

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

__all__ = ["Pattern", "compile_patterns"]

Pattern = Union[str, "re.Pattern[str]", Rule]
Matcher = Callable[[str, str], bool]


def _never(path: str, method: str) -> bool:
    return False


def compile_patterns(patterns: Iterable[Pattern]) -> Matcher:
    """One callable ``match(path, method) -> bool`` for all the patterns."""
    exact: set[str] = set()
    alternatives: list[str] = []
    separate: list[re.Pattern[str]] = []
    rules: list[Rule] = []
    converters: dict[str, Any] = {}
    for pattern in patterns:
        if isinstance(pattern, Rule):
            if pattern.map is not None:
                converters.update(pattern.map.converters)
            rules.append(pattern.empty())
        elif isinstance(pattern, re.Pattern):
            if isinstance(pattern.pattern, bytes):
                raise TypeError("path regexes must be str patterns")
            if pattern.flags & ~re.UNICODE:
                separate.append(pattern)
            else:
                alternatives.append(pattern.pattern)
        elif isinstance(pattern, str):
            if not pattern.startswith("/") and pattern != "*":
                raise ValueError(f"path pattern {pattern!r} must start with '/'")
            if "<" in pattern:
                rules.append(Rule(pattern))
            elif "*" in pattern:
                alternatives.append(".*".join(re.escape(part) for part in pattern.split("*")))
            else:
                exact.add(pattern)
        else:
            raise TypeError(f"unsupported path pattern {pattern!r}")

    combined: re.Pattern[str] | None = None
    if alternatives:
        try:
            combined = re.compile("|".join(f"(?:{a})" for a in alternatives))
        except re.error:
            # Patterns that cannot share one regex (clashing group names, inline
            # global flags) are matched one by one; correctness over speed.
            separate.extend(re.compile(a) for a in alternatives)
            combined = None

    rule_match = _rule_matcher(rules, converters) if rules else None
    exact_set = frozenset(exact)
    regex_match = combined.fullmatch if combined is not None else None
    others = tuple(p.fullmatch for p in separate)

    if not (exact_set or regex_match or others or rule_match):
        return _never

    def match(path: str, method: str) -> bool:
        if path in exact_set:
            return True
        if regex_match is not None and regex_match(path) is not None:
            return True
        for other in others:
            if other(path) is not None:
                return True
        return rule_match is not None and rule_match(path, method)

    return match


def _rule_matcher(rules: list[Rule], converters: dict[str, Any]) -> Matcher:
    url_map = Map(rules, strict_slashes=False, merge_slashes=False, converters=converters)
    adapter = url_map.bind("localhost", "/")
    # The static start of each rule prefilters, so most paths that match no
    # rule never raise werkzeug's NotFound (an exception per request is slow).
    prefixes = sorted({rule.rule.split("<", 1)[0] for rule in rules})
    prefilter = re.compile("|".join(re.escape(p) for p in prefixes)).match

    def match(path: str, method: str) -> bool:
        if prefilter(path) is None:
            return False
        try:
            adapter.match(path, method=method)
        except HTTPException:
            return False
        return True

    return match
