"""Users and tokens: registration, login, API keys, profile, suspension, the audit chain.
Every rule is in db/functions/users.sql; this module calls and maps (see docs/users.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from .client import Tx


@dataclass(frozen=True)
class RegisteredUser:
    """keen.register_user's row."""

    id: UUID
    email: str
    username: str
    role: str
    is_admin: bool
    account_status: str
    created_at: datetime


@dataclass(frozen=True)
class LoginResult:
    """keen.login's row: who logged in (the actor is not changed: use Keen.as_user)."""

    user_id: UUID
    is_admin: bool
    role: str
    admin_privileges: dict[str, Any]


@dataclass(frozen=True)
class UserSummary:
    """One row of keen.list_users (admin only)."""

    id: UUID
    email: str
    username: str
    display_name: str | None
    role: str
    is_admin: bool
    account_status: str
    email_verified: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class Profile:
    """keen.update_profile's row: the actor's editable profile."""

    id: UUID
    email: str
    username: str
    display_name: str | None
    timezone: str
    preferences: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True)
class NewApiKey:
    """keen.create_api_key's row: the token is shown here only, keen-db keeps its SHA-256."""

    token_id: UUID
    token: str

    def __repr__(self) -> str:  # never print a whole secret by accident
        return f"NewApiKey(token_id={self.token_id!r}, token='{self.token[:9]}...')"


@dataclass(frozen=True)
class ApiKeyIdentity:
    """keen.authenticate_api_key's row: whose key it is (that user is now the actor)."""

    user_id: UUID
    token_id: UUID
    scopes: list[str]
    is_admin: bool
    bypass_limits: bool


@dataclass(frozen=True)
class AuditChainBreak:
    """One row of keen.verify_audit_chain: the first broken link of a chain."""

    chain_name: str
    chain_seq: int
    audit_id: int | None
    problem: str


class UsersApi:
    """tx.users: see CONTRACT.md "Users and tokens" and docs/users.md."""

    def __init__(self, tx: Tx):
        self.tx = tx

    def register(self, email: str, username: str, password: str, display_name: str | None = None) -> RegisteredUser:
        """A new user and its credit account; InvalidInput, Conflict."""
        return self.tx.one(
            "SELECT id, email, username, role, is_admin, account_status, created_at"
            "  FROM keen.register_user(%s, %s, %s, %s)",
            (email, username, password, display_name),
            RegisteredUser,
        )

    def login(self, email: str, password: str, ip: str | None = None) -> LoginResult:
        """bcrypt check in the database; AuthenticationFailed (28P01 bad credentials, 28000
        inactive account or locked-out e-mail)."""
        return self.tx.one(
            "SELECT user_id, is_admin, role, admin_privileges FROM keen.login(%s, %s, %s)",
            (email, password, ip),
            LoginResult,
        )

    def list_users(self, limit: int = 100, offset: int = 0) -> list[UserSummary]:
        """A page of users, oldest first; admin only (PermissionDenied)."""
        return self.tx.all(
            "SELECT id, email, username, display_name, role, is_admin, account_status,"
            "       email_verified, created_at, last_login_at"
            "  FROM keen.list_users(%s, %s)",
            (limit, offset),
            UserSummary,
        )

    def suspend_user(self, user_id: UUID | str, reason: str | None = None) -> None:
        """Admin: the user can no longer log in, be acted as or use its API keys."""
        self.tx.execute("SELECT keen.suspend_user(%s, %s)", (user_id, reason))

    def reactivate_user(self, user_id: UUID | str) -> None:
        """Admin: lifts a suspension."""
        self.tx.execute("SELECT keen.reactivate_user(%s)", (user_id,))

    def change_password(self, old_password: str, new_password: str) -> None:
        """The actor's password; AuthenticationFailed for a wrong current one."""
        self.tx.execute("SELECT keen.change_password(%s, %s)", (old_password, new_password))

    def update_profile(
        self, display_name: str | None = None, timezone: str | None = None, preferences: dict[str, Any] | None = None
    ) -> Profile:
        """The actor's display name, time zone, preferences (None leaves a field unchanged)."""
        return self.tx.one(
            "SELECT id, email, username, display_name, timezone, preferences, updated_at"
            "  FROM keen.update_profile(%s, %s, %s::jsonb)",
            (display_name, timezone, None if preferences is None else json.dumps(preferences)),
            Profile,
        )

    def create_api_key(self, name: str, scopes: Sequence[str] = (), expires_at: datetime | None = None) -> NewApiKey:
        """A new key for the actor; keep NewApiKey.token, it is never shown again."""
        return self.tx.one(
            "SELECT token_id, token FROM keen.create_api_key(%s, %s::text[], %s)",
            (name, list(scopes), expires_at),
            NewApiKey,
        )

    def authenticate_api_key(self, token: str, ip: str | None = None) -> ApiKeyIdentity:
        """The key's owner becomes the actor of this transaction; AuthenticationFailed
        (28000) for an unknown, revoked or expired key. `ip`: the end user's address."""
        if ip is None:
            return self.tx.one(
                "SELECT user_id, token_id, scopes, is_admin, bypass_limits FROM keen.authenticate_api_key(%s)",
                (token,),
                ApiKeyIdentity,
            )
        return self.tx.one(
            "SELECT user_id, token_id, scopes, is_admin, bypass_limits FROM keen.authenticate_api_key(%s, %s::inet)",
            (token, ip),
            ApiKeyIdentity,
        )

    def revoke_api_key(self, token_id: UUID | str) -> None:
        """The actor's key (an admin: anyone's); NotFound otherwise."""
        self.tx.execute("SELECT keen.revoke_api_key(%s)", (token_id,))

    def verify_audit_chain(self) -> list[AuditChainBreak]:
        """The first broken link of each audit chain (empty: intact); admin or maintenance."""
        return self.tx.all(
            "SELECT chain_name, chain_seq, audit_id, problem FROM keen.verify_audit_chain()", None, AuditChainBreak
        )
