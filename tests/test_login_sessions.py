"""Login sessions, refresh rotation and reuse detection, access tokens (JWT HS256), the admin only
through a credential, e-mail verification and password reset (CONTRACT.md "Login sessions, ...",
docs/security.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from keen_client.errors import AuthenticationFailed, InvalidInput, NotFound, PermissionDenied

from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD

PASSWORD = "correct horse battery"
START = "SELECT * FROM keen.start_login_session(%s, %s, %s, %s, %s)"


def email_of(db, user_id) -> str:
    with db.su() as conn:
        return conn.execute("SELECT email FROM keen.users WHERE id = %s", (user_id,)).fetchone()[0]


def start(db, email, password=PASSWORD, second_factor=None, ip="198.51.100.1", agent="pytest"):
    """start_login_session on a raw keen_app connection: a dict of its columns."""
    with psycopg.connect(db.app_url) as conn:
        cur = conn.execute(START, (email, password, second_factor, ip, agent))
        return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def refresh(db, token, ip=None):
    with psycopg.connect(db.app_url) as conn:
        cur = conn.execute("SELECT * FROM keen.refresh_login_session(%s, %s)", (token, ip))
        return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def sqlstate_of(fn, *args):
    try:
        fn(*args)
    except psycopg.Error as exc:
        return exc.sqlstate
    return "ok"


def test_start_login_session_issues_a_refresh_and_an_access_token_and_makes_the_user_the_actor(db, make_user):
    user_id = make_user()
    with psycopg.connect(db.app_url) as conn:
        cur = conn.execute(START, (email_of(db, user_id), PASSWORD, None, "198.51.100.1", "pytest"))
        row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
        assert conn.execute("SELECT keen.actor_id()").fetchone()[0] == user_id
    assert row["user_id"] == user_id and row["aal"] == "aal1" and row["is_admin"] is False
    assert row["refresh_token"].startswith("keenr_") and len(row["refresh_token"]) == 49
    lifetime = row["access_expires_at"] - row["refresh_expires_at"]
    assert abs(lifetime.total_seconds() + 30 * 86400 - 15 * 60) < 5  # 15 minutes vs 30 days
    with db.su() as conn:
        stored = conn.execute(
            "SELECT token_hash FROM keen.login_refresh_tokens WHERE user_id = %s", (user_id,)
        ).fetchall()
        audited = conn.execute(
            "SELECT count(*) FROM keen.audit_logs WHERE event_subtype = 'login_session_started' AND user_id = %s",
            (user_id,),
        ).fetchone()[0]
    assert stored == [(hashlib.sha256(row["refresh_token"].encode()).hexdigest(),)]
    assert audited == 1


def test_the_access_token_is_an_hs256_jwt_signed_with_a_key_only_keen_auth_reads(db, make_user):
    row = start(db, email_of(db, make_user()))
    header, payload, signature = row["access_token"].split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
    assert claims["sub"] == str(row["user_id"]) and claims["sid"] == str(row["login_session_id"])
    assert claims["exp"] - claims["iat"] == 15 * 60
    with db.su() as conn:
        key = bytes.fromhex(
            conn.execute("SELECT value FROM keen.auth_secrets WHERE name = 'jwt_hmac_key'").fetchone()[0]
        )
    mac = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature
    with psycopg.connect(db.app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT value FROM keen.auth_secrets")


def test_authenticate_access_token_makes_its_user_the_actor(keen, db, make_user):
    user_id = make_user()
    row = start(db, email_of(db, user_id))
    with keen.with_access_token(row["access_token"]) as tx:
        assert tx.actor_id == user_id


def test_a_forged_expired_or_tampered_access_token_is_28000(db, make_user):
    row = start(db, email_of(db, make_user()))
    header, payload, signature = row["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_claims = {**claims, "exp": claims["exp"] + 86400}
    forged = ".".join(
        [header, base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode(), signature]
    )
    wrong_key = hmac.new(b"guessed key", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    resigned = f"{header}.{payload}." + base64.urlsafe_b64encode(wrong_key).rstrip(b"=").decode()
    with psycopg.connect(db.app_url, autocommit=True) as conn:
        for token in (forged, resigned, "not a token", row["access_token"][:-2] + "AA"):
            assert sqlstate_of(conn.execute, "SELECT keen.authenticate_access_token(%s)", (token,)) == "28000"
    with db.su() as conn:
        key = bytes.fromhex(
            conn.execute("SELECT value FROM keen.auth_secrets WHERE name = 'jwt_hmac_key'").fetchone()[0]
        )
    expired_claims = {**claims, "iat": claims["iat"] - 3600, "exp": claims["iat"] - 60}
    body = base64.urlsafe_b64encode(json.dumps(expired_claims).encode()).rstrip(b"=").decode()
    mac = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    expired = f"{header}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with psycopg.connect(db.app_url, autocommit=True) as conn:
        assert sqlstate_of(conn.execute, "SELECT keen.authenticate_access_token(%s)", (expired,)) == "28000"
        # the same claims with a live exp, signed with the real key, pass: only the expiry refused it
        live_claims = {**claims, "exp": claims["exp"] + 60}
        body = base64.urlsafe_b64encode(json.dumps(live_claims).encode()).rstrip(b"=").decode()
        mac = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        live = f"{header}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        assert (
            conn.execute("SELECT user_id FROM keen.authenticate_access_token(%s)", (live,)).fetchone()[0]
            == (row["user_id"])
        )


def test_revoking_the_login_session_kills_its_access_token_at_once(keen, db, make_user):
    user_id = make_user()
    row = start(db, email_of(db, user_id))
    with keen.with_access_token(row["access_token"]) as tx:
        tx.execute("SELECT keen.revoke_login_session(%s)", (row["login_session_id"],))
    with pytest.raises(AuthenticationFailed), keen.with_access_token(row["access_token"]):
        pass
    assert sqlstate_of(refresh, db, row["refresh_token"]) == "28000"


def test_refresh_rotates_the_tokens_and_retires_the_presented_one(db, make_user):
    row = start(db, email_of(db, make_user()))
    new = refresh(db, row["refresh_token"])
    assert new["login_session_id"] == row["login_session_id"]
    assert new["refresh_token"] != row["refresh_token"] and new["access_token"] != row["access_token"]
    assert refresh(db, new["refresh_token"])["login_session_id"] == row["login_session_id"]


def test_a_replayed_refresh_token_revokes_the_whole_login_session(keen, db, make_user):
    row = start(db, email_of(db, make_user()))
    new = refresh(db, row["refresh_token"])
    assert sqlstate_of(refresh, db, row["refresh_token"]) == "28000"  # the stolen copy comes back
    # the whole session is dead: the legitimate client's fresh tokens too
    assert sqlstate_of(refresh, db, new["refresh_token"]) == "28000"
    with pytest.raises(AuthenticationFailed), keen.with_access_token(new["access_token"]):
        pass
    with db.su() as conn:
        revoked = conn.execute(
            "SELECT revoked_reason FROM keen.login_sessions WHERE id = %s", (row["login_session_id"],)
        ).fetchone()[0]
        audited = conn.execute("SELECT count(*) FROM keen.audit_logs WHERE event_subtype = 'refresh_token_reused'")
        assert audited.fetchone()[0] == 2  # each retired token presented is audited (the stolen copy, then ours)
    assert revoked == "refresh_token_reused"


@pytest.mark.parametrize("round_", range(3))
def test_two_concurrent_refreshes_of_one_token_exactly_one_wins_and_the_session_lives(db, make_user, round_):
    """The two refreshes overlap for certain: the first is held open (its token row locked) until
    the second waits for that lock; then the first commits and the second finds the token retired
    (28000) and leaves the session alive: a race, not a replay. (Run freely, the second could
    start after the first committed, which is a replay and rightly revokes the session.)"""
    row = start(db, email_of(db, make_user()))
    with psycopg.connect(db.app_url) as first, ThreadPoolExecutor(1) as pool, db.su() as watcher:
        first.execute("SELECT * FROM keen.refresh_login_session(%s)", (row["refresh_token"],))
        second = pool.submit(sqlstate_of, refresh, db, row["refresh_token"])
        while (
            not second.done()
            and not watcher.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE %s = ANY (pg_blocking_pids(a.pid)))",
                (first.info.backend_pid,),
            ).fetchone()[0]
        ):
            time.sleep(0.01)
        first.commit()
        assert second.result() == "28000"
    with db.su() as conn:
        live = conn.execute(
            "SELECT revoked_at IS NULL FROM keen.login_sessions WHERE id = %s", (row["login_session_id"],)
        ).fetchone()[0]
        unretired = conn.execute(
            "SELECT token_hash FROM keen.login_refresh_tokens WHERE login_session_id = %s AND retired_at IS NULL",
            (row["login_session_id"],),
        ).fetchall()
    assert live and len(unretired) == 1


def test_refresh_of_an_unknown_expired_or_suspended_users_token_is_28000(keen, db, make_user, admin_id):
    user_id = make_user()
    row = start(db, email_of(db, user_id))
    assert sqlstate_of(refresh, db, "keenr_" + "A" * 43) == "28000"
    assert sqlstate_of(refresh, db, "garbage") == "28000"
    with keen.as_user(admin_id) as tx:
        tx.users.suspend_user(user_id)
    assert sqlstate_of(refresh, db, row["refresh_token"]) == "28000"
    other = start(db, email_of(db, make_user()))
    with db.su() as conn:
        conn.execute(
            "UPDATE keen.login_refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
            (hashlib.sha256(other["refresh_token"].encode()).hexdigest(),),
        )
    assert sqlstate_of(refresh, db, other["refresh_token"]) == "28000"


def test_list_and_revoke_login_sessions_own_only_and_admin_any(keen, db, make_user, admin_id):
    alice, bob = make_user(), make_user()
    a1, a2 = start(db, email_of(db, alice)), start(db, email_of(db, alice))
    with keen.as_user(alice) as tx:
        listed = tx.scalar("SELECT array_agg(login_session_id ORDER BY created_at) FROM keen.list_login_sessions()")
    assert listed == [a1["login_session_id"], a2["login_session_id"]]
    with pytest.raises(NotFound), keen.as_user(bob) as tx:
        tx.execute("SELECT keen.revoke_login_session(%s)", (a1["login_session_id"],))
    with pytest.raises(PermissionDenied), keen.as_user(bob) as tx:
        tx.execute("SELECT keen.revoke_all_login_sessions(%s)", (alice,))
    with keen.as_user(admin_id) as tx:
        tx.execute("SELECT keen.revoke_login_session(%s)", (a1["login_session_id"],))
    with keen.as_user(alice) as tx:
        assert tx.scalar("SELECT keen.revoke_all_login_sessions(%s)", (alice,)) == 1
        assert tx.scalar("SELECT count(*) FROM keen.list_login_sessions()") == 0


def test_change_password_reset_password_and_suspend_user_revoke_the_login_sessions(keen, db, make_user, admin_id):
    user_id = make_user()
    email = email_of(db, user_id)
    first = start(db, email)
    with keen.as_user(user_id) as tx:
        tx.users.change_password(PASSWORD, "a new password 1")
    assert sqlstate_of(refresh, db, first["refresh_token"]) == "28000"
    second = start(db, email, "a new password 1")
    with keen.transaction() as tx:
        token = tx.scalar("SELECT keen.request_password_reset(%s)", (email,))
        assert tx.scalar("SELECT keen.reset_password(%s, %s)", (token, "a new password 2")) == user_id
    assert sqlstate_of(refresh, db, second["refresh_token"]) == "28000"
    third = start(db, email, "a new password 2")
    with keen.as_user(admin_id) as tx:
        tx.users.suspend_user(user_id)
    with pytest.raises(AuthenticationFailed), keen.with_access_token(third["access_token"]):
        pass


def test_act_as_refuses_the_admin_and_the_admin_acts_through_a_credential(db, admin_id):
    with psycopg.connect(db.app_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT keen.act_as(%s)", (admin_id,))
    row = start(db, ADMIN_EMAIL, ADMIN_PASSWORD)
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.authenticate_access_token(%s)", (row["access_token"],))
        assert conn.execute("SELECT keen.actor_is_admin()").fetchone()[0] is True
        assert conn.execute("SELECT count(*) FROM keen.list_users()").fetchone()[0] >= 1


def test_an_admin_action_through_an_access_token_is_audited_as_the_admin(db, admin_id, make_user):
    target = make_user()
    row = start(db, ADMIN_EMAIL, ADMIN_PASSWORD)
    with psycopg.connect(db.app_url) as conn:
        conn.execute("SELECT keen.authenticate_access_token(%s)", (row["access_token"],))
        conn.execute("SELECT keen.suspend_user(%s)", (target,))
    with db.su() as conn:
        entry = conn.execute(
            "SELECT actor_id, is_admin_action FROM keen.audit_logs WHERE event_subtype = 'user_suspended'"
        ).fetchone()
    assert entry == (admin_id, True)


def test_email_verification_token_is_single_use_expiring_and_stored_as_sha256(keen, db, make_user):
    user_id = make_user()
    with keen.as_user(user_id) as tx:
        token = tx.scalar("SELECT keen.request_email_verification()")
    with db.su() as conn:
        assert conn.execute("SELECT token_hash FROM keen.account_tokens").fetchone()[0] == (
            hashlib.sha256(token.encode()).hexdigest()
        )
    with keen.transaction() as tx:
        assert tx.scalar("SELECT keen.verify_email(%s)", (token,)) == user_id
        assert tx.actor_id is None
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.scalar("SELECT keen.verify_email(%s)", (token,))
    with db.su() as conn:
        assert conn.execute("SELECT email_verified FROM keen.users WHERE id = %s", (user_id,)).fetchone()[0]
    with keen.as_user(user_id) as tx:
        late = tx.scalar("SELECT keen.request_email_verification()")
    with db.su() as conn:
        conn.execute("UPDATE keen.account_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.scalar("SELECT keen.verify_email(%s)", (late,))


def test_password_reset_is_single_use_keeps_the_token_on_a_bad_password_and_expires(keen, db, make_user):
    user_id = make_user()
    email = email_of(db, user_id)
    with keen.transaction() as tx:
        token = tx.scalar("SELECT keen.request_password_reset(%s)", (email,))
        assert tx.scalar("SELECT keen.request_password_reset(%s)", ("nobody@example.com",)) is None
    with pytest.raises(InvalidInput), keen.transaction() as tx:
        tx.scalar("SELECT keen.reset_password(%s, %s)", (token, "short"))
    with keen.transaction() as tx:
        assert tx.scalar("SELECT keen.reset_password(%s, %s)", (token, "the new password")) == user_id
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.scalar("SELECT keen.reset_password(%s, %s)", (token, "another password"))
    start(db, email, "the new password")
    with keen.transaction() as tx:
        late = tx.scalar("SELECT keen.request_password_reset(%s)", (email,))
    with db.su() as conn:
        conn.execute("UPDATE keen.account_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.scalar("SELECT keen.reset_password(%s, %s)", (late, "yet another one"))
