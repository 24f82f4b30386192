"""Why the collector refused a request: HTTP status, a stable code, the field and a message."""

from __future__ import annotations

from typing import Any


class RequestRejected(Exception):
    """A request the collector answers with a 4xx/5xx JSON error and publishes nothing for."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        #: the label of ``engagement_collector_rejected_total`` (a small fixed set)
        self.reason = reason or code

    def body(self) -> dict[str, Any]:
        """The JSON error body (``code``/``message`` as the Segment SDKs read them)."""
        out: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


def invalid(field: str | None, message: str, reason: str = "invalid") -> RequestRejected:
    """400: the input is malformed; ``field`` names where (``batch[3].userId``)."""
    where = f"{field}: " if field else ""
    return RequestRejected(400, "invalid_request", f"{where}{message}", field, reason)


def too_large(field: str | None, message: str) -> RequestRejected:
    """413: the body or one event exceeds its limit."""
    return RequestRejected(413, "payload_too_large", message, field, "oversize")


def unauthorized(message: str, reason: str = "unauthorized") -> RequestRejected:
    """401: missing or unknown write key, or a bad webhook signature."""
    return RequestRejected(401, "unauthorized", message, None, reason)


def message_of(err: Any) -> str:
    """A pydantic error's message without its ``Value error, `` prefix."""
    return str(err["msg"]).removeprefix("Value error, ")
