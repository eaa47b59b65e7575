"""Handlers for ``handler = "python"`` routes and ``action = "python"`` jobs in the tests."""

from __future__ import annotations

import asyncio
import time

from hermes.jobrunner.handlers import JobContext
from hermes.messages import InboundMessage


async def shout(message: InboundMessage) -> str:
    return message.text.upper()


def reverse(message: InboundMessage) -> str:
    """Synchronous: runs on a worker thread."""
    return message.text[::-1]


async def hang(message: InboundMessage) -> str:
    await asyncio.Event().wait()
    return "never"


async def brief(message: InboundMessage) -> str:
    await asyncio.sleep(0.02)  # as a handler calling an API would: runs overlap in time
    return message.text


async def slow(message: InboundMessage) -> str:
    await asyncio.sleep(0.5)
    return f"slow reply to {message.text}"


def blocking_sleep(message: InboundMessage) -> str:
    time.sleep(0.3)  # on a worker thread: the event loop does not notice
    return f"slept for {message.text}"


def answer(message: InboundMessage) -> str:
    return f"re: {message.text}"


def wrong_type(message: InboundMessage) -> int:
    return 42


def report(context: JobContext) -> str:
    return f"report from {context.job} ({context.trigger})"
