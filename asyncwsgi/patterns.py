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
rules. The matcher answers with the pattern that matched, as written in the
configuration (:func:`pattern_label`): a metric label whose values are
bounded by the configuration, never by the paths requested.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Union

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

__all__ = ["Pattern", "compile_patterns", "pattern_label"]

Pattern = Union[str, "re.Pattern[str]", Rule]
#: ``match(path, method)``: the label of the pattern that matched, or None.
Matcher = Callable[[str, str], "str | None"]


def pattern_label(pattern: Pattern) -> str:
    """How a pattern is named in metrics: the string it was configured with
    (a regex's source, a rule's ``rule``)."""
    if isinstance(pattern, Rule):
        return pattern.rule
    if isinstance(pattern, re.Pattern):
        return pattern.pattern
    return pattern


# What only a regular expression has: anchors, escapes, classes, groups, ".*".
_LOOKS_LIKE_REGEX = re.compile(r"^\^|\$$|\\[dDwWsS./]|\[|\(|\.\*|\.\+")


def _never(path: str, method: str) -> str | None:
    return None


class _Sorted:
    """The patterns by kind, in their order, each checked as it comes."""

    def __init__(self) -> None:
        self.exact: set[str] = set()
        # (label, regex source), to be combined into one regex.
        self.alternatives: list[tuple[str, str]] = []
        self.separate: list[tuple[re.Pattern[str], str]] = []  # (regex, label)
        self.rules: list[Rule] = []
        self.converters: dict[str, Any] = {}

    def add(self, pattern: Pattern) -> None:
        if isinstance(pattern, Rule):
            if pattern.map is not None:
                self.converters.update(pattern.map.converters)
            self.rules.append(pattern.empty())
        elif isinstance(pattern, re.Pattern):
            if isinstance(pattern.pattern, bytes):
                raise TypeError("path regexes must be str patterns")
            if pattern.flags & ~re.UNICODE:
                self.separate.append((pattern, pattern.pattern))
            else:
                self.alternatives.append((pattern.pattern, pattern.pattern))
        elif isinstance(pattern, str):
            self._add_string(pattern)
        else:
            raise TypeError(f"unsupported path pattern {pattern!r}")

    def _add_string(self, pattern: str) -> None:
        if not pattern.startswith("/") and pattern != "*":
            hint = ""
            if _LOOKS_LIKE_REGEX.search(pattern):
                hint = f": for a regular expression, pass re.compile({pattern!r})"
            raise ValueError(f"path pattern {pattern!r} must start with '/'{hint}")
        if "<" in pattern:
            self.rules.append(Rule(pattern))
        elif "*" in pattern:
            source = ".*".join(re.escape(part) for part in pattern.split("*"))
            self.alternatives.append((pattern, source))
        else:
            self.exact.add(pattern)

    def combined(self) -> re.Pattern[str] | None:
        """The alternatives as one regex, if any; if they cannot share one
        (clashing group names, inline global flags), None and they are
        matched one by one instead: correctness over speed."""
        if not self.alternatives:
            return None
        try:
            return re.compile("|".join(f"(?:{a})" for _, a in self.alternatives))
        except re.error:
            self.separate.extend((re.compile(a), label) for label, a in self.alternatives)
            self.alternatives = []
            return None


def compile_patterns(patterns: Iterable[Pattern]) -> Matcher:
    """One callable ``match(path, method)`` for all the patterns, answering
    the :func:`pattern_label` of the first that matches (exact paths first,
    then wildcards and regexes in their order, then rules), or None."""
    kinds = _Sorted()
    for pattern in patterns:
        kinds.add(pattern)
    combined = kinds.combined()  # first: it may move alternatives to separate

    rule_match = _rule_matcher(kinds.rules, kinds.converters) if kinds.rules else None
    exact_set = frozenset(kinds.exact)
    regex_match = combined.fullmatch if combined is not None else None
    # Which alternative the combined regex matched is found again one by one,
    # only for a path that matched: named groups in the combined regex would
    # tell at once but slow every miss (the pass-through) by some 30 ns.
    which = tuple((re.compile(a).fullmatch, label) for label, a in kinds.alternatives)
    others = tuple((p.fullmatch, label) for p, label in kinds.separate)

    if not (exact_set or regex_match or others or rule_match):
        return _never

    # A path that matches nothing (the pass-through) takes the same steps as
    # when the matcher answered a bool; only a match looks for its label.
    def match(path: str, method: str) -> str | None:
        if path in exact_set:
            return path
        if regex_match is not None and regex_match(path) is not None:
            for alternative, label in which:
                if alternative(path) is not None:
                    return label
        for other, label in others:
            if other(path) is not None:
                return label
        return rule_match(path, method) if rule_match is not None else None

    return match


def _rule_matcher(rules: list[Rule], converters: dict[str, Any]) -> Matcher:
    url_map = Map(rules, strict_slashes=False, merge_slashes=False, converters=converters)
    adapter = url_map.bind("localhost", "/")
    # The static start of each rule prefilters, so most paths that match no
    # rule never raise werkzeug's NotFound (an exception per request is slow).
    prefixes = sorted({rule.rule.split("<", 1)[0] for rule in rules})
    prefilter = re.compile("|".join(re.escape(p) for p in prefixes)).match

    def match(path: str, method: str) -> str | None:
        if prefilter(path) is None:
            return None
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except HTTPException:
            return None
        return rule.rule

    return match
