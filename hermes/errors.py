"""Exceptions raised by the gateway and its adapters.

::

    HermesError
     └── AdapterError                   a platform adapter failed
          ├── SendError                 an outgoing message was not delivered
          │    ├── AlreadyDelivered     ... because the platform already has it (a retry)
          │    ├── RateLimited          still rate limited after the retries
          │    ├── MessageRejected      refused for good: retrying cannot help
          │    ├── QQApiError         the QQ open platform answered with an error
          │    │    ├── QQRateLimited    (RateLimited too)
          │    │    └── QQMessageRejected (MessageRejected too)
          │    └── TelegramApiError    the Telegram Bot API answered ``"ok": false``, or not at all
          │         ├── TelegramRateLimited     (RateLimited too)
          │         └── TelegramMessageRejected (MessageRejected too)
          ├── QQAuthError               the token endpoint refused the credentials (not retryable)
          ├── QQTokenUnavailable        the token endpoint failed or timed out (retryable)
          └── QQProtocolError           a frame from the gateway broke the protocol
               └── QQMalformedFrame     ... or was not a payload at all (dropped, not fatal)

Errors from the libraries underneath (httpx, websockets, json) are translated at the
adapter's boundary and chained with ``raise ... from exc``.
"""

from __future__ import annotations


class HermesError(Exception):
    """Base class of every error raised on purpose by the gateway."""


class AdapterError(HermesError):
    """A platform adapter failed."""


class SendError(AdapterError):
    """An outgoing message was not delivered."""


class AlreadyDelivered(SendError):
    """The platform refused a message as a duplicate of one it already has: a retry of a
    message whose first attempt did arrive. For the outbox this means delivered."""


class RateLimited(SendError):
    """The platform kept rate limiting after the retries."""


class MessageRejected(SendError):
    """The platform refused this message for good (a bad target or ``msg_id``, a reply
    window passed, no permission, a daily quota): retrying cannot help. For the outbox this
    means ``failed`` at once, so the message does not hold its chat through every retry."""


class QQApiError(SendError):
    """An error answer from the QQ open platform's REST API."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.summary = message
        """The message without the status, code and trace."""
        self.status = status
        self.code = code
        self.trace_id = trace_id
        detail = f"HTTP {status}" + (f", code {code}" if code is not None else "")
        detail += f", trace {trace_id}" if trace_id else ""
        super().__init__(f"{message} ({detail})")


class QQRateLimited(QQApiError, RateLimited):
    """The QQ API still rate limited the call after the retries."""


class QQMessageRejected(QQApiError, MessageRejected):
    """The QQ API refused a message with a client error (HTTP 4xx other than 401 and 429,
    not a frequency limit)."""


class QQAuthError(AdapterError):
    """The token endpoint refused the app id or secret: restarting will not help."""


class QQTokenUnavailable(AdapterError):
    """The token endpoint failed, timed out or answered nonsense: worth retrying."""


class QQProtocolError(AdapterError):
    """The gateway sent something the protocol does not allow."""


class QQMalformedFrame(QQProtocolError):
    """A frame that is not a payload (not JSON, no integer ``op``): dropped and logged."""


class TelegramApiError(SendError):
    """An error answer from the Telegram Bot API (``{"ok": false, "error_code": ...}``), or
    none at all (``status`` 0: a network error or a timeout). The message never holds the bot
    token: it is part of every request URL, so nothing of the URL is kept."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        status: int,
        description: str = "",
        retry_after: float | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        self.method = method
        self.status = status
        """The HTTP status, or the answer's ``error_code``; 0 when no answer came."""
        self.description = description
        self.retry_after = retry_after
        """``parameters.retry_after`` of a 429: seconds to wait before the next call."""
        self.migrate_to_chat_id = migrate_to_chat_id
        """``parameters.migrate_to_chat_id``: the group became this supergroup."""
        super().__init__(message)


class TelegramRateLimited(TelegramApiError, RateLimited):
    """The Bot API still answered 429 after the retries (or asked for a longer wait)."""


class TelegramMessageRejected(TelegramApiError, MessageRejected):
    """The Bot API refused a message for good: the bot was blocked (403), the chat does not
    exist (400), the text is empty."""
