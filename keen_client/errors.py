"""SQLSTATE -> exception, in one place (CONTRACT.md section 4)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class KeenError(Exception):
    """Every keen-db error: carries the SQLSTATE, the server's message, and its DETAIL and HINT
    when it sent them (e.g. KN005's "first used by transaction ...", KN007's next allowed time)."""

    def __init__(self, sqlstate: str | None, message: str, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        text = f"[{self.sqlstate}] {self.message}" if self.sqlstate else self.message
        if self.detail:
            text += f" (DETAIL: {self.detail})"
        if self.hint:
            text += f" (HINT: {self.hint})"
        return text


class InsufficientCredits(KeenError):
    """KN001: the balance (or the available balance) does not cover the charge."""


class SpendingLimitExceeded(KeenError):
    """KN002: a daily or monthly limit would be passed."""


class ReservationError(KeenError):
    """KN003: the reservation is not live (captured, released or expired)."""


class SessionStateError(KeenError):
    """KN004: session state or depth violation."""


class IdempotencyConflict(KeenError):
    """KN005: an idempotency key reused with different parameters."""


class SecondFactorRequired(KeenError):
    """KN006: a second factor is required, or the code given is wrong or already used."""


class RateLimited(KeenError):
    """KN007: the API key's rate limit is exceeded (DETAIL says when the next call is allowed)."""


class PermissionDenied(KeenError):
    """42501: not allowed for this actor."""


class NotFound(KeenError):
    """P0002: not found, or another tenant's (the two are never told apart)."""


class InvalidInput(KeenError):
    """22023 (and the other data exceptions of class 22): invalid input."""


class Conflict(KeenError):
    """23505: duplicate."""


class AuthenticationFailed(KeenError):
    """28P01 / 28000: bad credentials, not authenticated or inactive."""


SQLSTATE_EXCEPTIONS: dict[str, type[KeenError]] = {
    "KN001": InsufficientCredits,
    "KN002": SpendingLimitExceeded,
    "KN003": ReservationError,
    "KN004": SessionStateError,
    "KN005": IdempotencyConflict,
    "KN006": SecondFactorRequired,
    "KN007": RateLimited,
    "42501": PermissionDenied,
    "P0002": NotFound,
    "22023": InvalidInput,
    "23505": Conflict,
    "28P01": AuthenticationFailed,
    "28000": AuthenticationFailed,
}


def from_psycopg(exc: psycopg.Error) -> KeenError:
    """The keen exception for a database error; unknown SQLSTATEs become a plain KeenError
    (class 22, data exceptions, become InvalidInput)."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag is not None and diag.message_primary else str(exc)).strip()
    detail = diag.message_detail if diag is not None else None
    hint = diag.message_hint if diag is not None else None
    cls = SQLSTATE_EXCEPTIONS.get(sqlstate or "")
    if cls is None and sqlstate and sqlstate.startswith("22"):
        cls = InvalidInput
    return (cls or KeenError)(sqlstate, message, detail, hint)


@contextmanager
def mapped() -> Iterator[None]:
    """Run a block, turning any psycopg error into its keen exception."""
    try:
        yield
    except psycopg.Error as exc:
        raise from_psycopg(exc) from exc
