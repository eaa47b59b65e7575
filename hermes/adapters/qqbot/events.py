"""QQ message events turned into :class:`~hermes.messages.InboundMessage`."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from hermes.messages import InboundMessage

MESSAGE_EVENTS = {
    "C2C_MESSAGE_CREATE": "c2c",
    "GROUP_AT_MESSAGE_CREATE": "group",
    "AT_MESSAGE_CREATE": "channel",
    "DIRECT_MESSAGE_CREATE": "dm",
}

KNOWN_EVENTS = frozenset(
    {
        *MESSAGE_EVENTS,
        # The rest of the platform's documented events (those the official SDK parses):
        # dispatched for the intents a bot asks for, ignored here. A type outside this set
        # is new to us; the adapter logs it once and ignores it.
        "READY",
        "RESUMED",
        "GUILD_CREATE",
        "GUILD_UPDATE",
        "GUILD_DELETE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "MESSAGE_CREATE",
        "MESSAGE_DELETE",
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "DIRECT_MESSAGE_DELETE",
        "INTERACTION_CREATE",
        "MESSAGE_AUDIT_PASS",
        "MESSAGE_AUDIT_REJECT",
        "AUDIO_START",
        "AUDIO_FINISH",
        "AUDIO_ON_MIC",
        "AUDIO_OFF_MIC",
        "ON_MIC",  # the names the official SDK parses; the intents table says AUDIO_ON_MIC
        "OFF_MIC",
        "AUDIO_OR_LIVE_CHANNEL_MEMBER_ENTER",
        "AUDIO_OR_LIVE_CHANNEL_MEMBER_EXIT",
        "PUBLIC_MESSAGE_DELETE",
        "GROUP_ADD_ROBOT",
        "GROUP_DEL_ROBOT",
        "GROUP_MSG_REJECT",
        "GROUP_MSG_RECEIVE",
        "FRIEND_ADD",
        "FRIEND_DEL",
        "C2C_MSG_REJECT",
        "C2C_MSG_RECEIVE",
        "FORUM_THREAD_CREATE",
        "FORUM_THREAD_UPDATE",
        "FORUM_THREAD_DELETE",
        "FORUM_POST_CREATE",
        "FORUM_POST_DELETE",
        "FORUM_REPLY_CREATE",
        "FORUM_REPLY_DELETE",
        "FORUM_PUBLISH_AUDIT_RESULT",
        "OPEN_FORUM_THREAD_CREATE",
        "OPEN_FORUM_THREAD_UPDATE",
        "OPEN_FORUM_THREAD_DELETE",
        "OPEN_FORUM_POST_CREATE",
        "OPEN_FORUM_POST_DELETE",
        "OPEN_FORUM_REPLY_CREATE",
        "OPEN_FORUM_REPLY_DELETE",
    }
)


def _str(d: dict[str, Any], key: str, event: str) -> str:
    value = d.get(key)
    if type(value) is str and value:  # the usual case, checked the cheap way (hot path)
        return value
    if type(value) is int:
        return str(value)
    raise ValueError(f"{event}: missing or empty {key!r}")


@functools.lru_cache(maxsize=64)
def _timestamp(raw: str) -> datetime | None:
    """The time of a message: one second's messages share one (immutable) object."""
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def parse_message(platform: str, event: str, d: Any, event_id: str | None = None) -> InboundMessage:
    """The inbound message in a message event; ``ValueError`` naming what is missing.

    ``event_id`` is the envelope's ``id``, kept in ``extra`` for replies that need it.
    Strings in ``d`` hold no lone surrogate: the decoder made each one U+FFFD. Called for
    every event received, so the usual case is checked inline, the cheap way."""
    kind = MESSAGE_EVENTS[event]
    if not isinstance(d, dict):
        raise ValueError(f"{event}: 'd' is not an object")
    author = d.get("author")
    if not isinstance(author, dict):
        raise ValueError(f"{event}: missing 'author'")
    extra: dict[str, str] = {}
    name: str | None = None
    if kind == "group":
        author_id = author.get("member_openid")
        if type(author_id) is not str or not author_id:
            author_id = _str(author, "member_openid", event)
        chat_id = d.get("group_openid")
        if type(chat_id) is not str or not chat_id:
            chat_id = _str(d, "group_openid", event)
    elif kind == "c2c":
        author_id = _str(author, "user_openid", event)
        chat_id = author_id
    else:
        author_id = _str(author, "id", event)
        username = author.get("username")
        name = username if isinstance(username, str) else None
        guild = _str(d, "guild_id", event)
        extra["guild_id"] = guild
        if kind == "channel":
            chat_id = _str(d, "channel_id", event)
        else:
            chat_id = guild
            if isinstance(d.get("channel_id"), str):
                extra["channel_id"] = d["channel_id"]
    if event_id:
        extra["event_id"] = event_id
    message_id = d.get("id")
    if type(message_id) is not str or not message_id:
        message_id = _str(d, "id", event)
    content = d.get("content")
    timestamp = d.get("timestamp")
    return InboundMessage(
        platform,
        message_id,
        kind,
        chat_id,
        author_id,
        content.strip() if type(content) is str else "",
        _timestamp(timestamp) if type(timestamp) is str and timestamp else None,
        name,
        event,
        extra,
    )
