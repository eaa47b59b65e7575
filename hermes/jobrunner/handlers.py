"""Routes for inbound messages, and the handlers they run: ``echo``, ``command``, ``python``.

A route matches by platform, chat kind and command prefix; the first match wins. Handlers
return the reply text (or nothing); the job runner records the run and puts the reply in
the outbox. Handlers never send anything themselves.

``command`` runs an argv as a subprocess in a session of its own: the message as JSON on
stdin and as ``HERMES_*`` environment variables, stdout is the reply, a non-zero exit is
an error. The environment is minimal (``PATH``, ``LANG``, ``TZ``, ``HOME`` and the
route's ``env``): the gateway's own variables, which may hold secrets, are not passed on.
On a time limit the whole process group is killed.

``python`` calls ``module:function`` with the :class:`~hermes.messages.InboundMessage`
(or, for jobs, a :class:`JobContext`); synchronous functions run on a worker thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from hermes.errors import HermesError
from hermes.messages import InboundMessage
from watchdog.settings import Duration, Section
from watchdog.threads import in_thread

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
OUTPUT_LIMIT = 64 * 1024


class HandlerError(HermesError):
    """A handler failed: a command exited non-zero, a function raised or returned nonsense."""

    def __init__(self, message: str, output: str | None = None) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a scheduled job's ``python`` function receives."""

    job: str
    run_id: str
    trigger: str
    """``schedule`` or ``manual``."""
    scheduled_for: datetime | None


# -- settings


def resolve_function(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function``; ``ValueError`` saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    fn: Callable[..., Any] | None = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not a callable")
    return fn


class ActionSettings(Section):
    """What a route or a job runs; shared by ``[[routes]]`` and ``[[jobs]]``."""

    command: list[str] | None = None
    function: str | None = None
    timeout: Duration = 30.0
    env: dict[str, str] = Field(default_factory=dict)

    def _check_action(self, kind: str, where: str) -> None:
        if kind == "command":
            if not self.command or not self.command[0]:
                raise ValueError(f'{where} needs command = ["program", "arg", ...]')
        elif self.command is not None:
            raise ValueError(f'command is only for {where.split()[0]} = "command"')
        if kind == "python":
            if not self.function:
                raise ValueError(f'{where} needs function = "package.module:function"')
            resolve_function(self.function)
        elif self.function is not None:
            raise ValueError(f'function is only for {where.split()[0]} = "python"')


class RouteSettings(ActionSettings):
    """One ``[[routes]]`` table."""

    name: str | None = None
    platform: str | None = None
    chat_kind: str | None = None
    prefix: Annotated[str, Field(min_length=1)] | None = None
    handler: Literal["echo", "command", "python", "ignore"]
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 4
    on_crash: Literal["cancel", "retry"] = "cancel"
    """A run cut off by a crash or a stop: ``cancel`` (it is not run again: running
    ``/deploy`` twice is worse than not at all) or ``retry`` (idempotent handlers: the
    message is run again after the restart, as a new attempt of its inbox row)."""

    @model_validator(mode="after")
    def _consistent(self) -> RouteSettings:
        self._check_action(self.handler, f'handler "{self.handler}"')
        return self


# -- routes


@dataclass(slots=True)
class Route:
    name: str
    settings: RouteSettings
    limit: asyncio.Semaphore
    function: Callable[..., Any] | None = None

    def matches(self, message: InboundMessage) -> bool:
        s = self.settings
        if s.platform is not None and s.platform != message.platform:
            return False
        if s.chat_kind is not None and s.chat_kind != message.chat_kind:
            return False
        if s.prefix is not None:
            text = message.text
            if not (
                text == s.prefix or (text.startswith(s.prefix) and text[len(s.prefix)].isspace())
            ):
                return False
        return True

    def args(self, message: InboundMessage) -> str:
        """The text after the prefix (the whole text without one)."""
        prefix = self.settings.prefix
        return message.text[len(prefix) :].strip() if prefix else message.text


def build_routes(settings: Sequence[RouteSettings]) -> list[Route]:
    routes = []
    for i, s in enumerate(settings):
        fn = resolve_function(s.function) if s.function else None
        routes.append(Route(s.name or f"route-{i + 1}", s, asyncio.Semaphore(s.concurrency), fn))
    return routes


def match(routes: Sequence[Route], message: InboundMessage) -> Route | None:
    for route in routes:
        if route.matches(message):
            return route
    return None


# -- running handlers


def message_document(message: InboundMessage, route: Route, run_id: str) -> dict[str, Any]:
    return {
        "platform": message.platform,
        "message_id": message.message_id,
        "chat_kind": message.chat_kind,
        "chat_id": message.chat_id,
        "author_id": message.author_id,
        "author_name": message.author_name,
        "text": message.text,
        "args": route.args(message),
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
        "event": message.event,
        "route": route.name,
        "run_id": run_id,
    }


async def handle(
    route: Route, message: InboundMessage, run_id: str, environ: Mapping[str, str]
) -> str | None:
    """Run ``route``'s handler for ``message``; the reply text, if any."""
    kind = route.settings.handler
    if kind == "echo":
        return message.text
    if kind == "ignore":
        return None
    if kind == "command":
        assert route.settings.command is not None
        return await run_with_document(
            route.settings.command,
            message_document(message, route, run_id),
            environ,
            route.settings.env,
        )
    assert route.function is not None
    return await call_function(route.function, message)


async def run_with_document(
    argv: Sequence[str],
    doc: Mapping[str, Any],
    environ: Mapping[str, str],
    extra: Mapping[str, str],
) -> str | None:
    """:func:`run_command` with ``doc`` as JSON on stdin and each of its fields as
    ``HERMES_<FIELD>``, beside the variables of ``environ`` in ``PASSED_ENV`` and the
    configured ``extra`` ones."""
    env = {k: environ[k] for k in PASSED_ENV if k in environ}
    env.update(extra)
    env.update({f"HERMES_{k.upper()}": "" if v is None else str(v) for k, v in doc.items()})
    return await run_command(argv, json.dumps(doc, ensure_ascii=False), env)


async def run_command(argv: Sequence[str], stdin: str, env: Mapping[str, str]) -> str | None:
    """Run ``argv``; stdout (stripped) is the reply. Killed with its process group if the
    caller's time limit cancels us."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise HandlerError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    try:
        out, err = await proc.communicate(stdin.encode("utf-8"))
    except BaseException:
        # Time limit or shutdown: the command and everything it started must go.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    stdout = out[:OUTPUT_LIMIT].decode("utf-8", "replace").strip()
    code = proc.returncode or 0  # communicate() returned: the process has exited
    if code != 0:
        stderr = err[-2000:].decode("utf-8", "replace").strip()
        how = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        raise HandlerError(
            f"{argv[0]} failed ({how})" + (f": {stderr}" if stderr else ""), output=stdout or None
        )
    return stdout or None


async def call_function(fn: Callable[..., Any], argument: Any) -> str | None:
    """Call a handler function; a synchronous one runs on a worker thread."""
    if inspect.iscoroutinefunction(fn):
        result = await fn(argument)
    else:
        # A thread cannot be interrupted: after a time limit it runs on, abandoned.
        result = await in_thread(
            fn, argument, name=f"hermes-handler-{getattr(fn, '__name__', 'fn')}"
        )
        if inspect.isawaitable(result):
            result = await result
    if result is None or isinstance(result, str):
        return result or None
    raise HandlerError(
        f"{getattr(fn, '__qualname__', fn)} returned {type(result).__name__}, expected str or None"
    )


_TARGET = re.compile(r"(?P<platform>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<kind>[a-z0-9_]+):(?P<chat>.+)")


def parse_target(text: str) -> tuple[str, str, str]:
    """``platform:chat-kind:id`` as a tuple; ``ValueError`` otherwise."""
    m = _TARGET.fullmatch(text)
    if not m:
        raise ValueError(
            f"target {text!r} is not 'platform:chat-kind:id' (e.g. 'qq-main:group:GROUP_OPENID')"
        )
    return m["platform"], m["kind"], m["chat"]
