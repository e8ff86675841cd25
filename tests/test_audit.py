"""The audit trail: what is audited, who may read it, append-only for every role, and a hash
chain that stays intact under concurrent writers and names the first link that was tampered with."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from keen_client.errors import AuthenticationFailed, PermissionDenied

from .conftest import act_as_admin

PASSWORD = "correct horse battery"
# The template's admin sign-in (conftest.sign_in_admin) left entries: a test's own start after them.
TEMPLATE_ENTRIES = "(SELECT count(*) FROM keen.audit_logs a WHERE a.user_id = (SELECT id FROM keen.users WHERE role = 'super_admin') AND a.chain_seq <= 2)"


def audit_rows(db, where: str = "true") -> list[tuple]:
    with psycopg.connect(db.maintenance_url) as conn:
        return conn.execute(
            f"SELECT event_type, event_subtype, user_id, actor_id, is_admin_action, risk_level "
            f"FROM keen.audit_logs WHERE chain_seq > {TEMPLATE_ENTRIES} AND {where} ORDER BY chain_seq"
        ).fetchall()


def base(db) -> int:
    """How many entries the template holds (the admin's sign-in): a test's entries follow them."""
    with psycopg.connect(db.maintenance_url) as conn:
        return conn.execute(f"SELECT {TEMPLATE_ENTRIES}").fetchone()[0]


def verify(db) -> list[tuple]:
    with psycopg.connect(db.maintenance_url) as conn:
        return conn.execute("SELECT chain_name, chain_seq, audit_id, problem FROM keen.verify_audit_chain()").fetchall()


def tamper(db, statement: str, *params) -> None:
    """What an intruder with superuser rights could do: triggers off, then change the table."""
    with db.su() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement, params)


def test_identity_events_are_audited_in_the_actors_name(keen, db, admin_id):
    with keen.transaction() as tx:
        user = tx.users.register("audited@example.com", "audited", PASSWORD).id
        tx.users.login("audited@example.com", PASSWORD)
    with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
        tx.users.login("audited@example.com", "wrong password")
    with keen.as_user(user) as tx:
        key = tx.users.create_api_key("ci")
        tx.users.revoke_api_key(key.token_id)
        tx.users.change_password(PASSWORD, "another password")
        tx.users.update_profile(timezone="UTC")
    with keen.as_user(admin_id) as tx:
        tx.users.suspend_user(user, "audit test")
        tx.users.reactivate_user(user)
        tx.users.list_users()
    assert audit_rows(db) == [
        ("user", "registered", user, None, False, "low"),
        ("auth", "login_succeeded", user, user, False, "low"),
        ("auth", "login_failed", user, None, False, "medium"),
        ("api_key", "created", user, user, False, "medium"),
        ("api_key", "revoked", user, user, False, "low"),
        ("user", "password_changed", user, user, False, "medium"),
        ("user", "profile_updated", user, user, False, "low"),
        ("admin", "user_suspended", user, admin_id, True, "high"),
        ("admin", "user_reactivated", user, admin_id, True, "medium"),
        ("admin", "users_listed", None, admin_id, True, "low"),
    ]
    assert verify(db) == []


def test_the_lockout_is_audited_as_high_risk(keen, db):
    for _ in range(11):
        with pytest.raises(AuthenticationFailed), keen.transaction() as tx:
            tx.users.login("target@example.com", "guess")
    rows = audit_rows(db, "event_subtype LIKE 'login_%'")
    assert [(r[1], r[5]) for r in rows] == [("login_failed", "medium")] * 10 + [("login_refused_locked_out", "high")]


def test_only_admins_and_the_maintenance_role_read_and_verify_the_audit_log(keen, make_user, admin_id, db):
    user = make_user()
    with keen.as_user(user) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.audit_logs") == 0
        with pytest.raises(PermissionDenied):
            tx.users.verify_audit_chain()
    with pytest.raises(PermissionDenied), keen.transaction() as tx:
        tx.users.verify_audit_chain()
    with keen.as_user(admin_id) as tx:
        assert tx.scalar("SELECT count(*) FROM keen.audit_logs WHERE user_id = %s", (user,)) == 1
        assert tx.users.verify_audit_chain() == []
    assert verify(db) == []


def test_keen_app_cannot_write_the_audit_log_in_any_way(db, admin_id):
    with psycopg.connect(db.app_url) as conn:
        act_as_admin(conn)
        for statement in (
            "SELECT keen_private.write_audit('forged', NULL, NULL)",
            "SELECT keen_private.audit_link()",
            "INSERT INTO keen.audit_logs (chain_seq, row_hash, event_type) VALUES (1, '\\x00', 'forged')",
            "INSERT INTO keen.audit_pending (event_type, risk_level, is_admin_action, created_at)"
            " VALUES ('forged', 'low', true, now())",
            "UPDATE keen.audit_logs SET risk_level = 'low'",
            "DELETE FROM keen.audit_logs",
            "TRUNCATE keen.audit_logs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
            act_as_admin(conn)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE keen.audit_logs SET risk_level = 'low'", "DELETE FROM keen.audit_logs", "TRUNCATE keen.audit_logs"],
)
def test_the_audit_log_is_append_only_even_for_a_superuser(make_user, db, statement):
    make_user()
    with db.su() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM keen.audit_logs").fetchone()[0] == base(db) + 1


def test_the_chain_stays_intact_under_many_concurrent_writers(keen, make_user, db, admin_id):
    users = [make_user(f"w{i}") for i in range(8)]

    def write(i: int) -> None:
        user = users[i % len(users)]
        with keen.as_user(user) as tx:
            key = tx.users.create_api_key(f"key {i}")
            tx.users.revoke_api_key(key.token_id)
        if i % 5 == 0:
            with keen.transaction() as tx:
                tx.users.register(f"late{i}@example.com", f"late{i}", PASSWORD)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(write, range(120)))
    with psycopg.connect(db.maintenance_url) as conn:
        seqs = [r[0] for r in conn.execute("SELECT chain_seq FROM keen.audit_logs ORDER BY chain_seq")]
        head = conn.execute("SELECT keen.verify_audit_chain()").fetchall()
    expected = base(db) + 8 + 120 * 2 + 24
    assert seqs == list(range(1, expected + 1))
    assert head == []


def test_writers_that_roll_back_leave_no_gap_in_the_chain(keen, make_user, db):
    user = make_user()
    for _ in range(3):
        with pytest.raises(RuntimeError), keen.as_user(user) as tx:
            tx.users.create_api_key("rolled back")
            raise RuntimeError("the caller gives up")
    with keen.as_user(user) as tx:
        tx.users.create_api_key("kept")
    with psycopg.connect(db.maintenance_url) as conn:
        seqs = [r[0] for r in conn.execute("SELECT chain_seq FROM keen.audit_logs ORDER BY chain_seq")]
    assert seqs == list(range(1, base(db) + 3))
    assert verify(db) == []


@pytest.fixture
def chain(keen, make_user, db):
    """Five audit entries; returns their ids in chain order."""
    user = make_user()
    with keen.as_user(user) as tx:
        for i in range(4):
            tx.users.create_api_key(f"k{i}")
    with db.su() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM keen.audit_logs ORDER BY chain_seq")]
    return ids[base(db) :]


def seq(db, n: int) -> int:
    """The chain_seq of the test's n-th entry (1-based)."""
    return base(db) + n


def test_a_changed_entry_is_named_as_the_first_broken_link(chain, db):
    tamper(db, 'UPDATE keen.audit_logs SET event_data = event_data || \'{"name": "innocent"}\' WHERE id = %s', chain[2])
    tamper(db, "UPDATE keen.audit_logs SET risk_level = 'low' WHERE id = %s", chain[3])
    assert verify(db) == [("main", seq(db, 3), chain[2], "row_hash does not match the entry (its content was changed)")]


def test_a_rehashed_entry_breaks_the_next_link(chain, db):
    # The intruder lowers a risk and recomputes that entry's own hash, so the entry checks out...
    tamper(db, "UPDATE keen.audit_logs SET risk_level = 'low' WHERE id = %s", chain[1])
    tamper(db, "UPDATE keen.audit_logs a SET row_hash = keen_private.audit_row_hash(a) WHERE id = %s", chain[1])
    # ...but the next entry no longer links to it.
    assert verify(db) == [("main", seq(db, 3), chain[2], "prev_hash is not the row_hash of the previous entry")]


def test_a_deleted_entry_is_named_as_a_gap(chain, db):
    tamper(db, "DELETE FROM keen.audit_logs WHERE id = %s", chain[1])
    assert verify(db) == [("main", seq(db, 3), chain[2], f"entries {seq(db, 2)} to {seq(db, 2)} are missing")]


def test_deleting_the_last_entries_is_caught_by_the_chain_head(chain, db):
    tamper(db, "DELETE FROM keen.audit_logs WHERE id = ANY(%s)", chain[3:])
    [(name, at, audit_id, problem)] = verify(db)
    assert (name, at, audit_id) == ("main", seq(db, 4), None)
    assert f"entries {seq(db, 4)} to {seq(db, 5)} are missing" in problem
