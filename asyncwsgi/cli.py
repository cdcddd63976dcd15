"""The ``asyncwsgi`` command: ``get`` a task's result, ``serve`` an app, run the ``demo``.

asyncwsgi get http://127.0.0.1:8000/reports/q3 -X POST -d '{}'
asyncwsgi serve examples.demo_app:app --path '/reports/*'
asyncwsgi demo
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from . import __version__
from .client import Progress, TaskTimeout, fetch
from .options import OPTIONS, Option

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except _Refused as exc:
        print(f"asyncwsgi: {exc}", file=sys.stderr)
        return 2


class _Refused(Exception):
    """A mistake on the command line: said in one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line: its usage of ``serve``
    (every option a flag) runs to dozens of lines before the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asyncwsgi", description="Background tasks for WSGI apps: client, server, demo."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")

    get = commands.add_parser("get", help="send a request and follow its task to the result")
    get.add_argument("url")
    get.add_argument("-X", "--method", default=None, help="HTTP method (POST with -d)")
    get.add_argument("-d", "--data", default=None, help="request body")
    get.add_argument(
        "-H", "--header", action="append", default=[], metavar="'K: V'", help="a request header"
    )
    get.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    get.add_argument(
        "--poll-header",
        action="append",
        default=None,
        metavar="NAME",
        help="repeat only these -H headers on polls (default: all but Content-* and the like)",
    )
    get.set_defaults(command=_get)

    serve = commands.add_parser("serve", help="serve a WSGI app wrapped in AsyncMiddleware")
    serve.add_argument("app", metavar="MODULE:APP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    for option in OPTIONS:
        _add_flag(serve, option)
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM or Ctrl-C, wait at most S seconds for the tasks under way, then end "
        "them as 500 and exit (default 30, as gunicorn's)",
    )
    serve.set_defaults(command=_serve)

    demo = commands.add_parser("demo", help="serve examples.demo_app and fetch a report")
    demo.add_argument("--port", type=int, default=0)
    demo.set_defaults(command=_demo)
    return parser


def _add_flag(parser: argparse.ArgumentParser, option: Option) -> None:
    """``--max-pending N`` for ``max_pending``; a list option (``paths``) is
    repeatable and also answers to its singular (``--path``)."""
    flags = ["--" + option.name.replace("_", "-")]
    if option.listed:
        flags.append(flags[0].removesuffix("s"))
        kwargs: dict[str, Any] = {"action": "extend", "metavar": "WORD"}
    else:
        kwargs = {"metavar": option.name.upper()}
    parser.add_argument(
        *flags,
        dest=option.name,
        type=option.convert,
        default=argparse.SUPPRESS,
        help=f"{option.help} (default: {option.default!r})",
        **kwargs,
    )


# -- get -----------------------------------------------------------------


class _ProgressDisplay:
    """A tqdm bar on a terminal; plain ``progress:`` lines otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.bar: Any = None
        self.plain = True
        if stream.isatty() and _columns(stream) > 0:
            try:
                import tqdm
            except ImportError:
                pass
            else:
                self.plain = False
                self._tqdm = tqdm.tqdm

    def __call__(self, progress: Progress) -> None:
        done, total = progress.get("done"), progress.get("total")
        message = progress.get("message") or ""
        if self.plain:
            count = f"{done}/{total}" if total is not None else f"{done}"
            line = f"progress: {count} {message}".rstrip()
            print(line, file=self.stream, flush=True)
            return
        if self.bar is None:
            self.bar = self._tqdm(
                total=total,
                file=self.stream,
                leave=False,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]",
            )
        if total is not None and self.bar.total != total:
            self.bar.total = total
        if isinstance(done, (int, float)):
            self.bar.n = done
        self.bar.set_description_str(str(message), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


def _get(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            print(f"asyncwsgi: bad header {header!r}, expected 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    method = args.method or ("POST" if args.data is not None else "GET")
    display = _ProgressDisplay(sys.stderr)
    try:
        response = fetch(
            args.url,
            method=method,
            data=args.data,
            headers=headers,
            timeout=args.timeout,
            on_progress=display,
            poll_headers=args.poll_header,
        )
    except TaskTimeout as exc:
        display.close()
        print(f"asyncwsgi: timed out: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        display.close()
        print(f"asyncwsgi: {exc}", file=sys.stderr)
        return 1
    display.close()
    sys.stdout.flush()
    sys.stdout.buffer.write(response.body)
    sys.stdout.buffer.flush()
    if not response.ok:
        print(f"asyncwsgi: {response.status} from {response.url}", file=sys.stderr)
    return 0 if response.ok else 1


# -- serve ---------------------------------------------------------------


def _load(spec: str) -> Any:
    """``MODULE:APP``, or ``MODULE:FACTORY()`` for an app factory called with
    no arguments (as Flask's ``--app`` and gunicorn read it). A module or
    name that is not there is a :class:`_Refused`; an error inside the
    module, or in the factory, is the app's, and keeps its traceback."""
    module_name, _, attribute = spec.partition(":")
    call = attribute.endswith("()")
    attribute = attribute.removesuffix("()")
    if not module_name or not all(part.isidentifier() for part in attribute.split(".")):
        raise _Refused(f"expected MODULE:APP (such as myapp:app), not {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like python -m: the current directory is importable
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name != missing and not module_name.startswith(missing + "."):
            raise  # the module was found and imports something missing
        raise _Refused(
            f"no module named {missing!r} (in {spec!r}): run from the directory "
            "it can be imported from"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _Refused(f"module {module_name!r} has no {attribute!r} (in {spec!r})") from None
    return target() if call else target


def _log_to_stderr() -> None:
    """asyncwsgi's own lines (the patterns in force, a store that cannot be
    reached, tasks cancelled) on stderr, unless logging is set up already:
    the server is run by hand, and its user should see why a path does or
    does not become a task."""
    logger = logging.getLogger("asyncwsgi")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from .middleware import AsyncMiddleware

    options = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    if not options.get("paths") and not options.get("prefer_paths"):
        print("asyncwsgi: give at least one --path or --prefer-path", file=sys.stderr)
        return 2
    app = _load(args.app)
    try:
        # Bound here, before anything starts: werkzeug says a port in use in
        # several lines and exits.
        listening = socket.create_server((args.host, args.port))
    except OSError as exc:
        raise _Refused(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    with listening:
        _log_to_stderr()
        try:
            application = AsyncMiddleware(app, **options)
        except (TypeError, ValueError, ImportError) as exc:
            raise _Refused(str(exc)) from None
        server = make_server(
            args.host, args.port, application, threaded=True, fd=listening.fileno()
        )
    print(f"serving {args.app} on http://{args.host}:{server.port}/", flush=True)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a process manager's stop) ends the server like Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        # A hung task must not keep the process alive: close() ends what is
        # left after the grace period (and says how many it waits for).
        application.close(timeout=args.graceful_timeout)
    return 0


# -- demo ----------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from .middleware import AsyncMiddleware

    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        from examples.demo_app import app
    except ImportError:
        print(
            "asyncwsgi: the demo needs the examples package: run it from the root of "
            "the asyncwsgi source tree",
            file=sys.stderr,
        )
        return 1
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the demo
    application = AsyncMiddleware(app, paths=["/reports/*"])
    server = make_server("127.0.0.1", args.port, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.port}"
    print(f"serving examples.demo_app on {base} with /reports/* marked", flush=True)
    print(f"POST {base}/reports/q3", flush=True)
    display = _ProgressDisplay(sys.stderr)
    try:
        # Progress comes over the event stream; were there none, short polls
        # with no Prefer: wait would still show it.
        response = fetch(
            base + "/reports/q3",
            method="POST",
            data=b"{}",
            timeout=60,
            on_progress=display,
            wait=0,
            max_interval=0.2,
        )
        display.close()
        print(response.status, response.headers.get("Content-Type", ""), flush=True)
        sys.stdout.buffer.write(response.body + b"\n")
        sys.stdout.buffer.flush()
        return 0 if response.ok else 1
    finally:
        display.close()
        server.shutdown()
        server.server_close()
        thread.join()
        application.close()
