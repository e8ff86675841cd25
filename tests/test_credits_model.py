"""Property test: random sequences of grants, deductions, metered LLM calls, holds, captures,
releases, refunds and limit changes, for several users and the admin, run against keen-db and against a small
Python model of the ledger's rules. After every step the outcome (the row's amount and balance,
or the SQLSTATE) and every account's balance, available balance and usage of the day must
agree; after every sequence the ledger must verify."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keen_client import errors

from .conftest import assert_ledger_clean

D = Decimal
MARKUP = D(5)
SIX = D("0.000001")

COSTS = [D("0.1"), D("0.25"), D(1), D("2.5"), D("0.000001"), D(3), D(0)]  # 0: invalid input
GRANTS = [D(5), D("10.5"), D(25), D(100), D("0.000001")]
LIMITS = [None, D(0), D(5), D("12.5"), D(30)]
KEYS = [None, "a", "b"]
# Metered calls (record_llm_usage): USD per million input / output tokens as seeded; token
# counts, (0, 0) included (a cost of 0: recorded, nothing charged); request ids per session.
PRICES = {"claude-opus-4-5": (D(5), D(25)), "claude-haiku-4-5": (D(1), D(5))}
TOKENS = [(1000, 100), (0, 0), (3, 0), (200_000, 20_000), (1, 0)]
REQUESTS = [None, "r1", "r2"]

USERS = 3  # regular users of each sequence; index USERS is the admin
grant = st.tuples(st.just("grant"), st.integers(0, USERS), st.sampled_from(GRANTS), st.sampled_from(KEYS))
deduct = st.tuples(st.just("deduct"), st.integers(0, USERS), st.sampled_from(COSTS), st.sampled_from(KEYS))
reserve = st.tuples(st.just("reserve"), st.integers(0, USERS), st.sampled_from(COSTS))
capture = st.tuples(st.just("capture"), st.integers(0, 50), st.sampled_from(COSTS))
release = st.tuples(st.just("release"), st.integers(0, 50))
refund = st.tuples(st.just("refund"), st.integers(0, 50), st.sampled_from(["whole", "half", "too much"]))
usage = st.tuples(
    st.just("usage"),
    st.integers(0, USERS),
    st.sampled_from(list(PRICES)),
    st.sampled_from(TOKENS),
    st.sampled_from(REQUESTS),
)
limits = st.tuples(st.just("limits"), st.integers(0, USERS - 1), st.sampled_from(LIMITS), st.sampled_from(LIMITS))
# The kind is drawn first, weighted towards the operations that move money.
KINDS = {
    "grant": grant,
    "deduct": deduct,
    "reserve": reserve,
    "capture": capture,
    "release": release,
    "refund": refund,
    "limits": limits,
    "usage": usage,
}
WEIGHTED = (
    ["grant"] * 3
    + ["deduct"] * 4
    + ["usage"] * 3
    + ["reserve"] * 3
    + ["capture"] * 3
    + ["release", "refund", "refund", "limits", "limits"]
)
op = st.sampled_from(WEIGHTED).flatmap(KINDS.__getitem__)


class Refused(Exception):
    def __init__(self, sqlstate: str):
        self.sqlstate = sqlstate


@dataclass
class Account:
    balance: Decimal
    unlimited: bool = False
    spent: Decimal = Decimal(0)  # usage of the UTC day (and month: one day is all a run spans)
    daily: Decimal | None = None
    monthly: Decimal | None = None


@dataclass
class Hold:
    id: uuid.UUID
    user: int
    held: Decimal
    live: bool = True


@dataclass
class Row:
    id: uuid.UUID
    user: int
    type: str
    amount: Decimal
    refunded: bool = False


@dataclass
class Model:
    """The ledger's rules, as plainly as they can be written."""

    accounts: list[Account]
    holds: list[Hold] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    keys: dict[tuple[int, str], tuple[str, Decimal, int]] = field(default_factory=dict)  # -> kind, value, row
    requests: dict[tuple[int, str], tuple[str, tuple[int, int], Any]] = field(default_factory=dict)  # -> first call

    def held(self, user: int, but: Hold | None = None) -> Decimal:
        return sum((h.held for h in self.holds if h.user == user and h.live and h is not but), D(0))

    def available(self, user: int) -> Decimal:
        return self.accounts[user].balance - self.held(user)

    @staticmethod
    def valid(amount: Decimal) -> None:
        if amount <= 0:
            raise Refused("22023")

    def replay(self, user: int, key: str | None, kind: str, value: Decimal) -> int | None:
        if key is None or (user, key) not in self.keys:
            return None
        if self.keys[(user, key)][:2] != (kind, value):
            raise Refused("KN005")
        return self.keys[(user, key)][2]

    def check_spend(self, user: int, charge: Decimal, but: Hold | None = None) -> None:
        a, held = self.accounts[user], self.held(user, but)
        if a.balance - held < charge:
            raise Refused("KN001")
        for limit in (a.daily, a.monthly):
            if limit is not None and a.spent + held + charge > limit:
                raise Refused("KN002")

    def grant(self, user: int, amount: Decimal, key: str | None) -> tuple[Decimal, Decimal] | int:
        self.valid(amount)
        if (i := self.replay(user, key, "purchase", amount)) is not None:
            return i
        self.accounts[user].balance += amount
        return amount, self.accounts[user].balance

    def charge(self, user: int, cost: Decimal, but: Hold | None = None) -> tuple[Decimal, Decimal]:
        if self.accounts[user].unlimited:
            return D(0), self.accounts[user].balance
        charge = (cost * MARKUP).quantize(SIX, ROUND_HALF_UP)
        self.check_spend(user, charge, but)
        self.accounts[user].balance -= charge
        self.accounts[user].spent += charge
        return -charge, self.accounts[user].balance

    def deduct(self, user: int, cost: Decimal, key: str | None) -> tuple[Decimal, Decimal] | int:
        self.valid(cost)
        if (i := self.replay(user, key, "usage", cost)) is not None:
            return i
        return self.charge(user, cost)

    def usage(self, user: int, model: str, tokens: tuple[int, int], request: str | None) -> Any:
        """A metered call: (credits charged, balance after or None when nothing was charged)."""
        if request is not None and (user, request) in self.requests:
            first = self.requests[(user, request)]
            if first[:2] != (model, tokens):
                raise Refused("KN005")
            return first[2]
        price_in, price_out = PRICES[model]
        cost = (tokens[0] * price_in + tokens[1] * price_out) / D(1_000_000)
        charge = (cost * MARKUP).quantize(SIX, ROUND_HALF_UP)
        if charge == 0:
            result: Any = (D(0), None)
        elif self.accounts[user].unlimited:
            result = (D(0), self.accounts[user].balance)
        else:
            amount, after = self.charge(user, cost)
            result = (-amount, after)
        if request is not None:
            self.requests[(user, request)] = (model, tokens, result)
        return result

    def reserve(self, user: int, cost: Decimal) -> Decimal:
        self.valid(cost)
        if self.accounts[user].unlimited:
            return D(0)
        held = (cost * MARKUP).quantize(SIX, ROUND_HALF_UP)
        self.check_spend(user, held)
        return held

    def capture(self, hold: Hold, cost: Decimal) -> tuple[Decimal, Decimal]:
        self.valid(cost)
        if not hold.live:
            raise Refused("KN003")
        result = self.charge(hold.user, cost, but=hold)
        hold.live = False
        return result

    def release(self, hold: Hold) -> None:
        if not hold.live:
            raise Refused("KN003")
        hold.live = False

    def refund(self, row: Row, how: str) -> tuple[Decimal, Decimal]:
        whole = abs(row.amount)
        amount = {"whole": whole, "half": (whole / 2).quantize(SIX, ROUND_HALF_UP), "too much": whole * 2}[how]
        self.valid(amount)
        if row.type not in ("purchase", "usage") or amount > whole:
            raise Refused("22023")
        if row.refunded:
            raise Refused("23505")
        delta = amount if row.type == "usage" else -amount
        if delta < 0 and self.available(row.user) < amount:
            raise Refused("KN001")
        self.accounts[row.user].balance += delta
        row.refunded = True
        return delta, self.accounts[row.user].balance


def attempt(fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Refused as exc:
        return exc.sqlstate
    except errors.KeenError as exc:
        return exc.sqlstate


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(ops=st.lists(op, min_size=10, max_size=30))
def test_random_ledger_sequences_agree_with_the_model(db, keen, admin_id, make_user, ops):
    users = [make_user("model") for _ in range(USERS)] + [admin_id]
    with keen.as_user(admin_id) as tx:
        admin_balance = tx.credits.get_balance(admin_id).current_balance
    model = Model([Account(D(0)) for _ in range(USERS)] + [Account(admin_balance, unlimited=True)])
    nonce = uuid.uuid4().hex[:8]  # the admin's account outlives a sequence: its keys must not
    sessions = []  # one session per user (and the admin) for the metered calls
    for u in users:
        with keen.as_user(u) as tx:
            sessions.append(tx.sessions.create_session(u, f"model-{nonce}-{len(sessions)}", "main", "m", "/m").id)

    for step in ops:
        kind = step[0]
        actual: Any
        expected: Any
        if kind in ("grant", "deduct"):
            _, u, value, key = step
            full_key = key and f"{nonce}-{key}"
            if kind == "grant":
                expected = attempt(model.grant, u, value, key)
                actual = attempt(_grant, keen, admin_id, users[u], value, full_key)
            else:
                expected = attempt(model.deduct, u, value, key)
                actual = attempt(_call, keen, users[u], "deduct_credits", users[u], value, idempotency_key=full_key)
            if isinstance(expected, int):  # a replay: the first row, again
                assert not isinstance(actual, str), step
                assert actual.id == model.rows[expected].id, step
                continue
            assert _shape(actual) == expected, step
            if not isinstance(actual, str):
                row_type = "purchase" if kind == "grant" else actual.transaction_type
                model.rows.append(Row(actual.id, u, row_type, actual.amount))
                if key:
                    model.keys[(u, key)] = ("purchase" if kind == "grant" else "usage", value, len(model.rows) - 1)
        elif kind == "usage":
            _, u, llm, tokens, request = step
            expected = attempt(model.usage, u, llm, tokens, request)
            actual = attempt(
                _call, keen, users[u], "record_llm_usage", sessions[u], llm, tokens[0], tokens[1], 0, 0, request
            )
            if isinstance(actual, str) or isinstance(expected, str):
                assert actual == expected, step
            else:
                assert (actual.charged_credits, actual.balance_after) == expected, step
                replayed = request is not None and any(
                    r.id == actual.transaction_id for r in model.rows if actual.transaction_id is not None
                )
                if actual.transaction_id is not None and not replayed:
                    row_type = "admin_bypass" if model.accounts[u].unlimited else "usage"
                    model.rows.append(Row(actual.transaction_id, u, row_type, -actual.charged_credits))
        elif kind == "reserve":
            _, u, cost = step
            expected = attempt(model.reserve, u, cost)
            actual = attempt(_call, keen, users[u], "reserve_credits", users[u], cost)
            if isinstance(actual, str) or isinstance(expected, str):
                assert actual == expected, step
            else:
                assert actual.held_credits == expected, step
                model.holds.append(Hold(actual.reservation_id, u, expected))
                assert actual.available_balance == model.available(u), step
        elif kind in ("capture", "release"):
            if not model.holds:
                continue
            hold = model.holds[step[1] % len(model.holds)]
            if kind == "capture":
                expected = attempt(model.capture, hold, step[2])
                actual = attempt(_call, keen, users[hold.user], "capture_reservation", hold.id, step[2])
                assert _shape(actual) == expected, step
                if not isinstance(actual, str):
                    model.rows.append(Row(actual.id, hold.user, actual.transaction_type, actual.amount))
            else:
                expected = attempt(model.release, hold)
                actual = attempt(_call, keen, users[hold.user], "release_reservation", hold.id)
                assert actual == expected, step
        elif kind == "refund":
            if not model.rows:
                continue
            row = model.rows[step[1] % len(model.rows)]
            expected = attempt(model.refund, row, step[2])
            whole = abs(row.amount)
            amount = (
                None
                if step[2] == "whole"
                else ((whole / 2).quantize(SIX, ROUND_HALF_UP) if step[2] == "half" else whole * 2)
            )
            actual = attempt(_call, keen, admin_id, "refund_credits", row.id, "model", amount)
            assert _shape(actual) == expected, step
            if not isinstance(actual, str):
                model.rows.append(Row(actual.id, row.user, "refund", actual.amount))
        else:
            _, u, daily, monthly = step
            _call(keen, users[u], "set_spending_limits", users[u], daily, monthly)
            model.accounts[u].daily, model.accounts[u].monthly = daily, monthly
            expected = None

        event(f"{kind}: {expected if isinstance(expected, str) else 'ok'}")  # --hypothesis-show-statistics
        with keen.as_user(admin_id) as tx:
            seen = [tx.credits.get_balance(x) for x in users]
        assert [(b.current_balance, b.available_balance, b.spent_today) for b in seen] == [
            (a.balance, model.available(i), a.spent) for i, a in enumerate(model.accounts)
        ], step

    assert_ledger_clean(db)


def _call(keen, actor, method: str, *args: Any, **kwargs: Any) -> Any:
    with keen.as_user(actor) as tx:
        return getattr(tx.credits, method)(*args, **kwargs)


def _grant(keen, admin_id, user, amount, key) -> Any:
    with keen.as_user(admin_id) as tx:
        return tx.credits.add_credits(user, amount, "model grant", key)


def _shape(result: Any) -> Any:
    """A ledger row as (amount, balance_after); a refusal as its SQLSTATE."""
    if isinstance(result, str):
        return result
    return result.amount, result.balance_after
