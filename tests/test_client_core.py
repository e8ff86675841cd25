"""The thin client: SQLSTATEs become the contract's exceptions, an actor context is one
transaction, the pool checks connections."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from keen_client import Keen, PoolSettings, Tx, client, errors
from keen_client.credits import Balance

from .conftest import assert_ledger_clean
from .test_pgbouncer import grant


@pytest.mark.parametrize(
    "sqlstate, exception",
    [
        ("KN001", errors.InsufficientCredits),
        ("KN002", errors.SpendingLimitExceeded),
        ("KN003", errors.ReservationError),
        ("KN004", errors.SessionStateError),
        ("KN005", errors.IdempotencyConflict),
        ("KN006", errors.SecondFactorRequired),
        ("KN007", errors.RateLimited),
        ("42501", errors.PermissionDenied),
        ("P0002", errors.NotFound),
        ("22023", errors.InvalidInput),
        ("23505", errors.Conflict),
        ("28P01", errors.AuthenticationFailed),
        ("28000", errors.AuthenticationFailed),
    ],
)
def test_each_contract_sqlstate_raises_its_exception_with_code_and_message(keen, sqlstate, exception):
    with pytest.raises(exception) as info:
        with keen.transaction() as tx:
            tx.execute("SELECT pg_catalog.set_config('keen.test_state', %s, true)", (sqlstate,))
            tx.execute("""DO $$ BEGIN
                RAISE EXCEPTION 'raised for the test' USING ERRCODE = current_setting('keen.test_state');
            END $$""")
    assert isinstance(info.value, errors.KeenError)
    assert info.value.sqlstate == sqlstate
    assert info.value.message == "raised for the test"


def test_other_data_exceptions_are_invalid_input_and_unknown_states_plain_keen_errors(keen):
    with pytest.raises(errors.InvalidInput):
        with keen.transaction() as tx:
            tx.scalar("SELECT 1 / 0")
    with pytest.raises(errors.KeenError) as info:
        with keen.transaction() as tx:
            tx.scalar("SELECT * FROM no_such_table")
    assert type(info.value) is errors.KeenError and info.value.sqlstate == "42P01"


def test_as_user_acts_for_one_transaction_only(keen, make_user):
    user = make_user()
    with keen.as_user(user) as tx:
        assert tx.actor_id == user
    with keen.transaction() as tx:
        assert tx.actor_id is None


def test_as_user_refuses_an_unknown_user(keen):
    with pytest.raises(errors.AuthenticationFailed):
        with keen.as_user("00000000-0000-0000-0000-000000000001"):
            pass


def test_a_failing_block_rolls_back_everything_it_did(keen, db):
    with pytest.raises(ZeroDivisionError):
        with keen.transaction() as tx:
            tx.scalar("SELECT id FROM keen.register_user('rollback@example.com', 'rollback_me', 'long enough pw')")
            raise ZeroDivisionError
    with db.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.users WHERE email = 'rollback@example.com'").fetchone()[0] == 0


def test_every_keen_error_keeps_the_servers_detail_and_hint(keen):
    with pytest.raises(errors.IdempotencyConflict) as info:
        with keen.transaction() as tx:
            tx.execute("""DO $$ BEGIN
                RAISE EXCEPTION 'key reused' USING ERRCODE = 'KN005',
                    DETAIL = 'first used by transaction 42', HINT = 'use a new key';
            END $$""")
    assert info.value.detail == "first used by transaction 42"
    assert info.value.hint == "use a new key"
    assert "first used by transaction 42" in str(info.value)


def test_a_query_that_must_return_a_row_and_returns_none_is_a_keen_error(keen):
    with pytest.raises(errors.NotFound) as info:
        with keen.transaction() as tx:
            tx.one("SELECT 1 AS user_id WHERE false", None, Balance)
    assert isinstance(info.value, errors.KeenError) and info.value.sqlstate == "P0002"


def test_area_apis_are_typed_properties_not_string_imports():
    assert not hasattr(client, "AREAS") and "__getattr__" not in vars(Tx)
    for area in ("users", "credits", "sessions", "streaming", "analytics"):
        prop = vars(Tx)[area]
        assert prop.func.__annotations__["return"].endswith("[Sync]")


def test_pool_settings_are_read_from_the_environment_when_a_pool_is_made(monkeypatch, db):
    monkeypatch.setenv("KEEN_POOL_MAX_SIZE", "3")
    monkeypatch.setenv("KEEN_STATEMENT_TIMEOUT_MS", "4321")
    monkeypatch.setenv("KEEN_POOLER", "pgbouncer")
    k = Keen(db.app_url, open=False)
    assert k.settings.max_size == 3 and k.pool.max_size == 3
    assert k.settings.statement_timeout_ms == 4321 and k.settings.pooler == "pgbouncer"
    assert PoolSettings(max_size=5).statement_timeout_ms == 4321  # the fields not given, from the env
    monkeypatch.setenv("KEEN_POOLER", "pgpool")
    with pytest.raises(ValueError, match="KEEN_POOLER"):
        PoolSettings()


def test_the_direct_client_sets_its_timeouts_at_startup(keen):
    with keen.transaction() as tx:
        assert tx.scalar("SHOW statement_timeout") == "30s"
        assert tx.scalar("SHOW idle_in_transaction_session_timeout") == "1min"


def test_reads_that_tolerate_lag_go_to_the_read_pool_read_only(db, make_user):
    user = make_user()
    k = Keen(db.app_url, PoolSettings(min_size=1, max_size=2), read_conninfo=db.app_url)
    try:
        assert k.read_pool is not None
        with k.read_as_user(user) as tx:
            assert tx.conn.info.dsn and tx.scalar("SHOW transaction_read_only") == "on"
            assert tx.credits.credit_history(user) == []
            assert tx.actor_id == user
        assert k.read_pool.get_stats()["requests_num"] >= 1
        with pytest.raises(errors.KeenError) as info:
            with k.read_as_user(user) as tx:
                tx.sessions.create_session(user, "s", "main", "v", "/tmp")
        assert info.value.sqlstate == "25006"  # read-only transaction: nothing is written there
        with k.as_user(user) as tx:
            assert tx.scalar("SHOW transaction_read_only") == "off"
    finally:
        k.close()


def _has_function(db, signature: str) -> bool:
    with psycopg.connect(db.superuser_url) as conn:
        return conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (signature,)).fetchone()[0]


def test_with_access_token_acts_as_the_token_user_and_refuses_a_bad_token(db, keen, make_user):
    if not _has_function(db, "keen.authenticate_access_token(text)") or not _has_function(
        db, "keen.start_login_session(text,text,text,inet,text)"
    ):
        pytest.skip("keen.authenticate_access_token is not deployed yet")
    user = make_user("token", password="correct horse battery")
    with db.su() as conn:
        email = conn.execute("SELECT email FROM keen.users WHERE id = %s", (user,)).fetchone()[0]
    with keen.transaction() as tx:
        token = tx.scalar("SELECT access_token FROM keen.start_login_session(%s, %s)", (email, "correct horse battery"))
    with keen.with_access_token(token) as tx:
        assert tx.actor_id == user
    with pytest.raises(errors.AuthenticationFailed):
        with keen.with_access_token(token[:-2] + "xx"):
            pass


def _ready_for_query_count(trace: str) -> int:
    """Round trips in a libpq trace: each ends with the server's ReadyForQuery."""
    return sum(1 for line in trace.splitlines() if "\tB\t" in line and "ReadyForQuery" in line)


@pytest.mark.parametrize("pooler", [None, "pgbouncer"])
def test_begin_act_as_and_the_first_call_share_one_round_trip_and_commit_is_the_second(
    db, keen, make_user, tmp_path, pooler
):
    user = make_user()
    grant(keen, db, user, 5)
    trace = tmp_path / "libpq.trace"
    with Keen(db.app_url, PoolSettings(min_size=1, max_size=1, pooler=pooler)) as k, trace.open("w") as out:
        with k.pool.connection() as conn:
            conn.pgconn.trace(out.fileno())
        with k.as_user(user) as tx:
            tx.credits.deduct_credits(user, 1)
        with k.pool.connection() as conn:
            conn.pgconn.untrace()
    text = trace.read_text()
    # The two checkouts to switch the trace on and off send nothing; the transaction: BEGIN,
    # act_as (and the timeouts behind a pooler), the call and a Sync, then COMMIT.
    assert _ready_for_query_count(text) == 2
    assert "BEGIN" in text and "act_as" in text and "deduct_credits" in text and "COMMIT" in text
    assert_ledger_clean(db)


def test_a_block_that_raises_after_a_call_commits_nothing(db, keen, make_user):
    user = make_user()
    grant(keen, db, user, 5)
    with pytest.raises(ZeroDivisionError):
        with keen.as_user(user) as tx:
            tx.credits.deduct_credits(user, 1)
            _ = 1 / 0
    with keen.as_user(user) as tx:
        assert tx.credits.get_balance(user).current_balance == 5
    assert_ledger_clean(db)


def test_an_empty_block_still_checks_its_actor(keen):
    with pytest.raises(errors.AuthenticationFailed):
        with keen.as_user(uuid.uuid4()):
            pass


def test_tx_conn_runs_inside_the_transaction_as_the_actor(keen, make_user):
    user = make_user()
    with keen.as_user(user) as tx:
        assert tx.conn.execute("SELECT keen.actor_id()").fetchone() == (user,)
        tx.conn.execute("SELECT pg_catalog.set_config('keen.probe', 'inside', true)")
        assert tx.scalar("SELECT pg_catalog.current_setting('keen.probe', true)") == "inside"


def test_connections_go_back_to_the_pool_in_psycopg_transaction_mode(keen, make_user):
    user = make_user()
    with pytest.raises(errors.AuthenticationFailed):
        with keen.as_user(user) as tx:
            tx.scalar("SELECT keen.act_as(%s)", (uuid.uuid4(),))
    with keen.as_user(user) as tx:
        tx.scalar("SELECT 1")
    for _ in range(3):
        with keen.pool.connection() as conn:
            assert conn.autocommit is False
            conn.execute("SELECT pg_catalog.set_config('keen.probe', 'x', false)")
            conn.rollback()  # in a transaction, even a session-level setting is undone
            assert conn.execute("SELECT pg_catalog.current_setting('keen.probe', true)").fetchone() in [(None,), ("",)]
