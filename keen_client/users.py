"""Users and tokens: registration, login, API keys, profile, suspension, the audit chain.
Every rule is in db/functions/users.sql; this module calls and maps (see docs/users.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from ._base import Area, M, Query, one, query, rows, scalar, void


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


# Columns named explicitly: a column added to a function's result later must not break class_row.
REGISTERED = "id, email, username, role, is_admin, account_status, created_at"
USER_SUMMARY = """id, email, username, display_name, role, is_admin, account_status, email_verified,
        created_at, last_login_at"""
PROFILE = "id, email, username, display_name, timezone, preferences, updated_at"
API_KEY_IDENTITY = "user_id, token_id, scopes, is_admin, bypass_limits"

REGISTER_SQL = (
    "SELECT "
    + REGISTERED
    + """ FROM keen.register_user(p_email => %s, p_username => %s,
        p_password => %s, p_display_name => %s)"""
)
LOGIN_SQL = """SELECT user_id, is_admin, role, admin_privileges
      FROM keen.login(p_email => %s, p_password => %s, p_ip => %s)"""
LIST_USERS_SQL = "SELECT " + USER_SUMMARY + " FROM keen.list_users(p_limit => %s, p_offset => %s)"
SUSPEND_SQL = "SELECT keen.suspend_user(p_user_id => %s, p_reason => %s)"
REACTIVATE_SQL = "SELECT keen.reactivate_user(p_user_id => %s)"
CHANGE_PASSWORD_SQL = "SELECT keen.change_password(p_old_password => %s, p_new_password => %s)"
UPDATE_PROFILE_SQL = (
    "SELECT "
    + PROFILE
    + """ FROM keen.update_profile(p_display_name => %s, p_timezone => %s,
        p_preferences => %s)"""
)
CREATE_API_KEY_SQL = """SELECT token_id, token
      FROM keen.create_api_key(p_name => %s, p_scopes => %s, p_expires_at => %s, p_rate_limit_per_hour => %s)"""
AUTHENTICATE_API_KEY_SQL = "SELECT " + API_KEY_IDENTITY + " FROM keen.authenticate_api_key(p_token => %s)"
AUTHENTICATE_API_KEY_IP_SQL = (
    "SELECT " + API_KEY_IDENTITY + " FROM keen.authenticate_api_key(p_token => %s, p_ip => %s)"
)
REVOKE_API_KEY_SQL = "SELECT keen.revoke_api_key(p_token_id => %s)"
VERIFY_AUDIT_SQL = "SELECT chain_name, chain_seq, audit_id, problem FROM keen.verify_audit_chain()"


class UsersApi(Area[M]):
    """tx.users: see CONTRACT.md "Users and tokens" and docs/users.md."""

    @query
    def register(
        self, email: str, username: str, password: str, display_name: str | None = None
    ) -> Query[RegisteredUser]:
        """A new user and its credit account; InvalidInput, Conflict."""
        return one(REGISTER_SQL, (email, username, password, display_name), RegisteredUser)

    @query
    def login(self, email: str, password: str, ip: str | None = None) -> Query[LoginResult]:
        """bcrypt check in the database; AuthenticationFailed (28P01 bad credentials, 28000
        inactive account or locked-out e-mail)."""
        return one(LOGIN_SQL, (email, password, ip), LoginResult)

    @query
    def list_users(self, limit: int = 100, offset: int = 0) -> Query[list[UserSummary]]:
        """A page of users, oldest first; admin only (PermissionDenied)."""
        return rows(LIST_USERS_SQL, (limit, offset), UserSummary)

    @query
    def suspend_user(self, user_id: UUID | str, reason: str | None = None) -> Query[None]:
        """Admin: the user can no longer log in, be acted as or use its API keys."""
        return void(SUSPEND_SQL, (user_id, reason))

    @query
    def reactivate_user(self, user_id: UUID | str) -> Query[None]:
        """Admin: lifts a suspension."""
        return void(REACTIVATE_SQL, (user_id,))

    @query
    def change_password(self, old_password: str, new_password: str) -> Query[None]:
        """The actor's password; AuthenticationFailed for a wrong current one."""
        return void(CHANGE_PASSWORD_SQL, (old_password, new_password))

    @query
    def update_profile(
        self, display_name: str | None = None, timezone: str | None = None, preferences: dict[str, Any] | None = None
    ) -> Query[Profile]:
        """The actor's display name, time zone, preferences (None leaves a field unchanged)."""
        prefs = None if preferences is None else Jsonb(preferences)
        return one(UPDATE_PROFILE_SQL, (display_name, timezone, prefs), Profile)

    @query
    def create_api_key(
        self,
        name: str,
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
        rate_limit_per_hour: int = 1000,
    ) -> Query[NewApiKey]:
        """A new key for the actor; keep NewApiKey.token, it is never shown again. Scopes from
        the contract's list (InvalidInput otherwise); past rate_limit_per_hour calls in any
        rolling hour authenticate_api_key is RateLimited (KN007)."""
        return one(CREATE_API_KEY_SQL, (name, list(scopes), expires_at, rate_limit_per_hour), NewApiKey)

    @query
    def authenticate_api_key(self, token: str, ip: str | None = None) -> Query[ApiKeyIdentity]:
        """The key's owner becomes the actor of this transaction; AuthenticationFailed
        (28000) for an unknown, revoked or expired key. `ip`: the end user's address."""
        if ip is None:
            return one(AUTHENTICATE_API_KEY_SQL, (token,), ApiKeyIdentity)
        return one(AUTHENTICATE_API_KEY_IP_SQL, (token, ip), ApiKeyIdentity)

    @query
    def revoke_api_key(self, token_id: UUID | str) -> Query[None]:
        """The actor's key (an admin: anyone's); NotFound otherwise."""
        return void(REVOKE_API_KEY_SQL, (token_id,))

    @query
    def verify_audit_chain(self) -> Query[list[AuditChainBreak]]:
        """The first broken link of each audit chain (empty: intact); admin or maintenance."""
        return rows(VERIFY_AUDIT_SQL, None, AuditChainBreak)

    # -- login sessions, e-mail verification, password reset, second factor (issue 11) --------

    @query
    def start_login_session(
        self,
        email: str,
        password: str,
        second_factor: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> Query[LoginSession]:
        """Sign-in: a login session (the user becomes the actor); AuthenticationFailed as
        login, SecondFactorRequired (KN006) when TOTP is on and the code is missing or wrong."""
        return one(START_LOGIN_SESSION_SQL, (email, password, second_factor, ip, user_agent), LoginSession)

    @query
    def refresh_login_session(self, refresh_token: str, ip: str | None = None) -> Query[LoginSession]:
        """Rotation: new tokens, the presented one retired; a retired one presented again
        revokes the whole login session (AuthenticationFailed, 28000)."""
        return one(REFRESH_LOGIN_SESSION_SQL, (refresh_token, ip), LoginSession)

    @query
    def authenticate_access_token(self, access_token: str) -> Query[AccessTokenIdentity]:
        """The token's user becomes the actor (see also Keen.with_access_token)."""
        return one(AUTHENTICATE_ACCESS_TOKEN_SQL, (access_token,), AccessTokenIdentity)

    @query
    def list_login_sessions(self) -> Query[list[LoginSessionInfo]]:
        """The actor's live login sessions, newest first."""
        return rows(LIST_LOGIN_SESSIONS_SQL, None, LoginSessionInfo)

    @query
    def revoke_login_session(self, login_session_id: UUID | str) -> Query[None]:
        """Own (another user's is NotFound), or any for an admin."""
        return void(REVOKE_LOGIN_SESSION_SQL, (login_session_id,))

    @query
    def revoke_all_login_sessions(self, user_id: UUID | str) -> Query[int]:
        """Own or admin; how many were revoked."""
        return scalar(REVOKE_ALL_LOGIN_SESSIONS_SQL, (user_id,), int)

    @query
    def request_email_verification(self) -> Query[str]:
        """A single-use token for the actor's e-mail, valid 24 hours (mail it)."""
        return scalar(REQUEST_EMAIL_VERIFICATION_SQL, None, str)

    @query
    def verify_email(self, token: str) -> Query[UUID]:
        """Marks the e-mail verified; AuthenticationFailed for an unknown, used or expired token."""
        return scalar(VERIFY_EMAIL_SQL, (token,), UUID)

    @query
    def request_password_reset(self, email: str) -> Query[str | None]:
        """A single-use reset token valid 1 hour; None for an unknown or inactive e-mail."""
        q: Query[str | None] = scalar(REQUEST_PASSWORD_RESET_SQL, (email,), str)
        return q

    @query
    def reset_password(self, token: str, new_password: str) -> Query[UUID]:
        """New password with a reset token; revokes every login session of the user."""
        return scalar(RESET_PASSWORD_SQL, (token, new_password), UUID)

    @query
    def enroll_totp(self) -> Query[TotpEnrollment]:
        """A pending TOTP secret for the actor (shown once)."""
        return one(ENROLL_TOTP_SQL, None, TotpEnrollment)

    @query
    def confirm_totp(self, code: str) -> Query[list[RecoveryCode]]:
        """Turns TOTP on; the ten recovery codes, shown only here. SecondFactorRequired for a wrong code."""
        return rows(CONFIRM_TOTP_SQL, (code,), RecoveryCode)

    @query
    def disable_totp(self, code: str) -> Query[None]:
        """Needs a current code or an unused recovery code (SecondFactorRequired)."""
        return void(DISABLE_TOTP_SQL, (code,))

    @query
    def totp_code(self, secret: bytes, at: datetime, digits: int = 6, step_seconds: int = 30) -> Query[str]:
        """RFC 6238 (HMAC-SHA1) code of a secret at a time, computed by the database."""
        return scalar(TOTP_CODE_SQL, (secret, at, digits, step_seconds), str)


@dataclass(frozen=True)
class LoginSession:
    """keen.start_login_session / refresh_login_session's row: the tokens are shown here only."""

    user_id: UUID
    login_session_id: UUID
    refresh_token: str
    refresh_expires_at: datetime
    access_token: str
    access_expires_at: datetime
    is_admin: bool
    aal: str

    def __repr__(self) -> str:  # never print a whole secret by accident
        return f"LoginSession(user_id={self.user_id!r}, login_session_id={self.login_session_id!r}, aal={self.aal!r})"


@dataclass(frozen=True)
class AccessTokenIdentity:
    """keen.authenticate_access_token's row (that user is now the actor)."""

    user_id: UUID
    login_session_id: UUID
    is_admin: bool
    aal: str


@dataclass(frozen=True)
class LoginSessionInfo:
    """One row of keen.list_login_sessions."""

    login_session_id: UUID
    created_at: datetime
    last_used_at: datetime
    ip: Any
    user_agent: str | None
    aal: str
    refresh_expires_at: datetime


@dataclass(frozen=True)
class TotpEnrollment:
    """keen.enroll_totp's row: the secret for an authenticator app (shown once)."""

    secret_base32: str
    otpauth_uri: str


@dataclass(frozen=True)
class RecoveryCode:
    """One row of keen.confirm_totp."""

    recovery_code: str


LOGIN_SESSION = (
    "user_id, login_session_id, refresh_token, refresh_expires_at, access_token, access_expires_at, is_admin, aal"
)
START_LOGIN_SESSION_SQL = (
    "SELECT "
    + LOGIN_SESSION
    + """ FROM keen.start_login_session(p_email => %s, p_password => %s,
        p_second_factor => %s, p_ip => %s, p_user_agent => %s)"""
)
REFRESH_LOGIN_SESSION_SQL = (
    "SELECT " + LOGIN_SESSION + " FROM keen.refresh_login_session(p_refresh_token => %s, p_ip => %s)"
)
AUTHENTICATE_ACCESS_TOKEN_SQL = """SELECT user_id, login_session_id, is_admin, aal
      FROM keen.authenticate_access_token(p_access_token => %s)"""
LIST_LOGIN_SESSIONS_SQL = """SELECT login_session_id, created_at, last_used_at, ip, user_agent, aal, refresh_expires_at
      FROM keen.list_login_sessions()"""
REVOKE_LOGIN_SESSION_SQL = "SELECT keen.revoke_login_session(p_login_session_id => %s)"
REVOKE_ALL_LOGIN_SESSIONS_SQL = "SELECT keen.revoke_all_login_sessions(p_user_id => %s)"
REQUEST_EMAIL_VERIFICATION_SQL = "SELECT keen.request_email_verification()"
VERIFY_EMAIL_SQL = "SELECT keen.verify_email(p_token => %s)"
REQUEST_PASSWORD_RESET_SQL = "SELECT keen.request_password_reset(p_email => %s)"
RESET_PASSWORD_SQL = "SELECT keen.reset_password(p_token => %s, p_new_password => %s)"
ENROLL_TOTP_SQL = "SELECT secret_base32, otpauth_uri FROM keen.enroll_totp()"
CONFIRM_TOTP_SQL = "SELECT recovery_code FROM keen.confirm_totp(p_code => %s)"
DISABLE_TOTP_SQL = "SELECT keen.disable_totp(p_code => %s)"
TOTP_CODE_SQL = "SELECT keen.totp_code(p_secret => %s, p_at => %s, p_digits => %s, p_step_seconds => %s)"
