"""docs/options.md, made from the options table.

``python -m asyncwsgi.optionspage`` writes the page (``--check``: exits 1,
saying so, when the page on disk differs); ``tests/test_options.py`` fails
while it is stale. Edit the table (:mod:`asyncwsgi.options`), not the page.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from .options import OPTIONS, Option
from .stores.settings import STORE_SETTINGS, StoreSetting

__all__ = ["PAGE", "main", "page"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"

_INTRO = """\
# Options

[Back to the README](../README.md)

<!-- Made by `python -m asyncwsgi.optionspage` from the table in
asyncwsgi/options.py: edit the table, then run it again. -->

All keyword-only, stored as attributes of the same name. Every option is
also a flag of `asyncwsgi serve` (`--max-pending 50`), a key of the Paste
filter and of Pyramid's settings, a Flask config key (`ASYNCWSGI_MAX_PENDING`)
and a key of Django's `ASYNCWSGI` setting; one table in `asyncwsgi/options.py`
drives them all, and an unknown key is an error naming it. Mistakes fail when
the middleware is built, saying what is expected (`methods="POST"` instead of
`["POST"]`, a pattern under `status_path`, a store directory that does not
exist). The options as checked, rules across them included, are one frozen
object, `middleware.settings` (`asyncwsgi.settings.Settings`).

| option | default | meaning |
| --- | --- | --- |
"""

_STORES_INTRO = """
## The stores' own settings

These are settings of the store that the middleware opens from a URL (given
with a `Store` object they are an error: set them on the store). A store URL
may carry them too, as query parameters, such as
`sqlite:///tasks.db?busy_timeout=5` or `redis://host:6379/0?min_replicas=1`;
a Redis store keeps them in its URL, so a worker that opens the store by that
URL uses the same. A setting that the store does not take is an error naming
the stores that do.

| setting | stores | the store's default |
| --- | --- | --- |
"""

_MiB = 2**20


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024 * _MiB), ("MiB", _MiB)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return str(value)


def _shown(value: Any, size: bool = False) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) if value else "()"
    if size and isinstance(value, int) and not isinstance(value, bool):
        return _size(value)
    return str(value)


# Options counted in bytes: their defaults are shown in MiB and GiB.
_BYTES = frozenset({"max_body", "max_result", "spool_threshold", "max_stored_bytes", "chunk_size"})


def _row(option: Option) -> str:
    meaning = (option.doc or option.help).replace("|", "\\|")
    return f"| `{option.name}` | `{_shown(option.default, option.name in _BYTES)}` | {meaning} |\n"


def _store_classes() -> dict[str, Any]:
    from .stores import MemoryStore, SQLiteStore

    classes: dict[str, Any] = {"memory": MemoryStore, "sqlite": SQLiteStore}
    try:
        from .stores.redis import RedisStore
    except ImportError:  # the page is made without redis-py: no Redis defaults shown
        return classes
    classes["redis"] = RedisStore
    return classes


def _store_default(setting: StoreSetting, classes: dict[str, Any]) -> str:
    """The default of each store that takes it, read from its signature (the
    one place it is written)."""
    found: dict[str, str] = {}
    for kind in setting.stores:
        cls = classes.get(kind)
        parameter = (
            None
            if cls is None
            else (inspect.signature(cls.__init__).parameters.get(setting.keyword_for()))
        )
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            found[kind] = _shown(parameter.default, setting.name in _BYTES)
    if not found:
        return "none"
    if len(set(found.values())) == 1 and len(found) == len(setting.stores):
        return f"`{next(iter(found.values()))}`"
    return ", ".join(f"{kind}: `{value}`" for kind, value in found.items())


def page() -> str:
    """The whole of docs/options.md."""
    classes = _store_classes()
    rows = "".join(_row(option) for option in OPTIONS)
    stores = "".join(
        f"| `{s.name}` | {', '.join(s.stores)} | {_store_default(s, classes)} |\n"
        for s in STORE_SETTINGS
    )
    return _INTRO + rows + _STORES_INTRO + stores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncwsgi.optionspage", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--path", type=Path, default=PAGE, help=f"the page (default: {PAGE})")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run python -m asyncwsgi.optionspage", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
