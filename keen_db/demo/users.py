"""Demo step: identity and tenant isolation. The admin logs in, a new user registers, logs in and
gets an API key; a second user's attempt to read or touch the first one's data is refused; the
audit chain of all that verifies. Leaves state["admin_id"], state["user_id"] (the new user) and
state["other_user_id"] (the second user) for the later steps."""

from __future__ import annotations

import os

from keen_client.errors import AuthenticationFailed, NotFound, PermissionDenied

PASSWORD = "demo password 1"


def run(ctx) -> None:
    keen = ctx.keen
    ctx.step("Users: login, registration, API keys and tenant isolation")

    admin_email = os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com")
    with keen.transaction() as tx:
        admin = tx.users.login(admin_email, os.environ.get("ADMIN_PASSWORD", "2con-creator"), "127.0.0.1")
    ctx.state["admin_id"] = admin.user_id
    granted = [k for k, v in admin.admin_privileges.items() if v is True]
    ctx.say(
        f"The seeded admin logs in (bcrypt, cost 12, checked in the database): role [bold]{admin.role}[/], "
        f"{len(granted)} privileges ({', '.join(sorted(granted)[:3])}, ...)."
    )

    with keen.transaction() as tx:
        alice = tx.users.register("alice@example.com", "alice", PASSWORD, "Alice")
        bob = tx.users.register("bob@example.com", "bob", PASSWORD, "Bob")
    ctx.state["user_id"], ctx.state["other_user_id"] = alice.id, bob.id
    ctx.table(
        "keen.register_user (each with a credit account at 0)",
        ["user", "id", "role", "status"],
        [[u.email, u.id, u.role, u.account_status] for u in (alice, bob)],
    )

    with keen.transaction() as tx:
        logged_in = tx.users.login("Alice@Example.com", PASSWORD, "203.0.113.7")
    ctx.say(f"Alice logs in (e-mail in any case): user {logged_in.user_id}, admin={logged_in.is_admin}.")
    for email, label in (("alice@example.com", "a wrong password"), ("nobody@example.com", "an unknown e-mail")):
        try:
            with keen.transaction() as tx:
                tx.users.login(email, "not the password")
        except AuthenticationFailed as exc:
            ctx.say(f"  {label}: [red]{exc}[/]")
    ctx.say(
        "  Both fail alike (one bcrypt each); every attempt is counted through an autonomous "
        "connection before its password is checked: 10 failures within 15 minutes refuse that e-mail "
        "from that source, with the same 28P01 (the owner elsewhere still signs in)."
    )

    with keen.as_user(alice.id) as tx:
        key = tx.users.create_api_key("alice's CI", ["sessions:write", "credits:read"])  # scopes from the contract
    ctx.say(f"Alice creates an API key, shown once: [bold]{key.token[:9]}...[/] (keen-db keeps its SHA-256 only).")
    with keen.transaction() as tx:
        ident = tx.users.authenticate_api_key(key.token)
        ctx.say(f"The key authenticates: actor {tx.actor_id}, scopes {ident.scopes}.")

    refusals = []
    with keen.as_user(bob.id) as tx:
        visible = tx.scalar("SELECT count(*) FROM keen.users")
        alices_rows = tx.scalar("SELECT count(*) FROM keen.auth_tokens WHERE user_id = %s", (alice.id,))
    refusals.append(["Bob: SELECT count(*) FROM keen.users", f"{visible} (his own row only)"])
    refusals.append(["Bob: SELECT Alice's API keys", f"{alices_rows} rows"])
    for label, call, expected in (
        ("Bob: revoke Alice's key", lambda u: u.revoke_api_key(key.token_id), NotFound),
        ("Bob: list every user", lambda u: u.list_users(), PermissionDenied),
        ("Bob: suspend Alice", lambda u: u.suspend_user(alice.id), PermissionDenied),
    ):
        try:
            with keen.as_user(bob.id) as tx:
                call(tx.users)
            refusals.append([label, "[red]allowed?![/]"])
        except expected as exc:
            refusals.append([label, f"refused: {exc}"])
    with keen.as_user(bob.id) as tx:
        tx.execute("SELECT set_config('app.is_admin_user', 'true', true), set_config('keen.is_admin', 'true', true)")
        refusals.append(
            [
                "Bob sets app.is_admin_user / keen.is_admin = 'true'",
                f"actor_is_admin() = {tx.scalar('SELECT keen.actor_is_admin()')}",
            ]
        )
        tx.execute("SELECT set_config('keen.actor_id', %s, true)", (str(alice.id),))
        refusals.append(
            ["Bob sets keen.actor_id to Alice's id by hand", f"actor_id() = {tx.scalar('SELECT keen.actor_id()')}"]
        )
    ctx.table("A cross-tenant read and its friends, refused", ["attempt", "result"], refusals)

    with keen.as_user(admin.user_id) as tx:
        users = tx.users.list_users()
        broken = tx.users.verify_audit_chain()
        entries = tx.scalar("SELECT count(*) FROM keen.audit_logs")
    ctx.say(
        f"The admin lists {len(users)} users; the audit chain holds {entries} entries "
        f"({'intact' if not broken else broken})."
    )
    second_factor_and_sessions(ctx, alice.id)


def _totp(secret: bytes, step: int) -> str:
    """RFC 6238 in Python: what an authenticator app computes (the database has its own)."""
    import hashlib
    import hmac
    import struct

    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[19] & 15
    return str((struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**6).zfill(6)


def second_factor_and_sessions(ctx, alice_id) -> None:
    """Identity completed (issue 11): the admin signs in with a second factor, a key hits its rate
    limit, a replayed refresh token kills its login session."""
    import base64
    import time

    from keen_client.errors import RateLimited, SecondFactorRequired

    keen = ctx.keen
    ctx.step("Identity: a second factor, login sessions, a rate limit, a stolen refresh token")
    admin_email = os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com")
    admin_password = os.environ.get("ADMIN_PASSWORD", "2con-creator")
    signin = "SELECT * FROM keen.start_login_session(%s, %s, %s, '127.0.0.1', 'keen-db demo')"
    with keen.transaction() as tx:
        first = tx.conn.execute(signin, (admin_email, admin_password, None)).fetchone()
        tx.execute("SELECT keen.authenticate_access_token(%s)", (first[4],))
        secret32 = tx.conn.execute("SELECT secret_base32 FROM keen.enroll_totp()").fetchone()[0]
        secret = base64.b32decode(secret32)
        codes = [
            r[0]
            for r in tx.conn.execute("SELECT * FROM keen.confirm_totp(%s)", (_totp(secret, int(time.time()) // 30),))
        ]
    ctx.say(
        f"The admin signs in (aal1), enrolls TOTP (secret {secret32[:6]}..., sealed with a key keen_app cannot read) "
        f"and confirms it: ten recovery codes, shown once ({codes[0]}, ...)."
    )
    try:
        with keen.transaction() as tx:
            tx.conn.execute(signin, (admin_email, admin_password, None))
    except SecondFactorRequired as exc:
        ctx.say(f"  The password alone is no longer enough: [red]{exc}[/]")
    with keen.transaction() as tx:
        row = tx.conn.execute(
            signin, (admin_email, admin_password, _totp(secret, int(time.time()) // 30 + 1))
        ).fetchone()
    ctx.say(
        f"  With a current TOTP code: login session {row[1]}, [bold]{row[7]}[/], access token {row[4][:16]}... (15 min)."
    )
    with keen.transaction() as tx:  # the demo's later steps sign in again: turn the factor off
        tx.execute("SELECT keen.authenticate_access_token(%s)", (row[4],))
        tx.execute("SELECT keen.disable_totp(%s)", (codes[0],))

    with keen.as_user(alice_id) as tx:
        limited = tx.users.create_api_key("alice's tight key", ["credits:read"], rate_limit_per_hour=3)
    outcomes = []
    for i in range(4):
        try:
            with keen.with_api_key(limited.token):
                outcomes.append([f"request {i + 1}", "ok"])
        except RateLimited as exc:
            outcomes.append([f"request {i + 1}", f"[red]KN007[/] {exc.detail}"])
    ctx.table("A key with rate_limit_per_hour = 3 (exact, any rolling hour)", ["call", "result"], outcomes)

    with keen.transaction() as tx:
        s = tx.conn.execute(signin, ("alice@example.com", PASSWORD, None)).fetchone()
    with keen.transaction() as tx:
        rotated = tx.conn.execute("SELECT * FROM keen.refresh_login_session(%s)", (s[2],)).fetchone()
    ctx.say(f"Alice's client refreshes: a new refresh token ({rotated[2][:10]}...), the old one retired.")
    try:
        with keen.transaction() as tx:
            tx.conn.execute("SELECT * FROM keen.refresh_login_session(%s)", (s[2],))
    except AuthenticationFailed as exc:
        ctx.say(f"  A thief replays the old refresh token: [red]{exc}[/]: the whole login session is revoked...")
    try:
        with keen.with_access_token(rotated[4]):
            pass
    except AuthenticationFailed:
        ctx.say("  ...and the legitimate client's fresh access token is dead too: it must sign in again.")
