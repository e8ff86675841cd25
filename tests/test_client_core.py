"""The thin client: SQLSTATEs become the contract's exceptions, an actor context is one
transaction, the pool checks connections."""

from __future__ import annotations

import pytest

from keen_client import errors


@pytest.mark.parametrize(
    "sqlstate, exception",
    [
        ("KN001", errors.InsufficientCredits),
        ("KN002", errors.SpendingLimitExceeded),
        ("KN003", errors.ReservationError),
        ("KN004", errors.SessionStateError),
        ("KN005", errors.IdempotencyConflict),
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
