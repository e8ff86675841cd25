"""The credit ledger: purchases, usage charges (5x markup, admin bypass), holds, refunds,
limits, auto-recharge requests and the ledger check. Every rule is in db/functions/credits.sql;
this module calls, maps rows to frozen dataclasses and passes money as Decimal, never float."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from ._base import Area, M, Query, one, query, rows, void


@dataclass(frozen=True)
class CreditTransaction:
    """One row of keen.credit_transactions (append-only). amount is signed: purchases and
    refunds of usage are positive, usage and refunds of purchases negative, admin_bypass 0."""

    id: UUID
    entry_no: int
    user_id: UUID
    account_id: UUID
    transaction_type: str
    amount: Decimal
    balance_after: Decimal
    claude_cost_usd: Decimal | None
    markup_multiplier: Decimal | None
    session_id: UUID | None
    stripe_payment_intent_id: str | None
    description: str
    metadata: dict[str, Any]
    is_admin_bypass: bool
    idempotency_key: str | None
    created_at: datetime
    created_by_ip: IPv4Address | IPv6Address | None
    refund_of: UUID | None


@dataclass(frozen=True)
class Reservation:
    """A hold placed by reserve_credits; available_balance is the balance minus live holds."""

    reservation_id: UUID
    held_credits: Decimal
    expires_at: datetime
    available_balance: Decimal


@dataclass(frozen=True)
class Balance:
    user_id: UUID
    current_balance: Decimal
    available_balance: Decimal
    lifetime_purchased: Decimal
    lifetime_spent: Decimal
    unlimited_credits: bool
    daily_limit: Decimal | None
    monthly_limit: Decimal | None
    spent_today: Decimal
    spent_this_month: Decimal


@dataclass(frozen=True)
class CreditValidation:
    sufficient: bool
    current_balance: Decimal
    required: Decimal
    shortfall: Decimal
    unlimited: bool


@dataclass(frozen=True)
class LedgerCheck:
    """One account in keen.verify_ledger: ok when its balance equals the sum of its ledger."""

    user_id: UUID
    balance: Decimal
    ledger_sum: Decimal
    ok: bool


@dataclass(frozen=True)
class RechargeRequest:
    """One row of keen.credit_recharge_requests (auto-recharge, for the payment side)."""

    id: UUID
    user_id: UUID
    account_id: UUID
    status: str
    threshold: Decimal
    requested_amount: Decimal
    balance_at_request: Decimal
    triggered_by: UUID
    purchase_transaction_id: UUID | None
    resolution_note: str | None
    created_at: datetime
    resolved_at: datetime | None


def money(value: Decimal | int | None) -> Decimal | None:
    """Money goes to the database as Decimal; a float (binary, inexact) is refused outright.
    Range, sign and decimal places are the database's to judge (22023)."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"money must be a Decimal or an int, not {type(value).__name__}")


# Columns named explicitly: a column added to the table later must not break class_row.
TX = """id, entry_no, user_id, account_id, transaction_type, amount, balance_after, claude_cost_usd,
        markup_multiplier, session_id, stripe_payment_intent_id, description, metadata,
        is_admin_bypass, idempotency_key, created_at, created_by_ip, refund_of"""

ADD_SQL = (
    "SELECT "
    + TX
    + """ FROM keen.add_credits(p_user_id => %s, p_amount => %s,
        p_description => %s, p_idempotency_key => %s)"""
)
DEDUCT_SQL = (
    "SELECT "
    + TX
    + """ FROM keen.deduct_credits(p_user_id => %s, p_claude_cost_usd => %s,
        p_session_id => %s, p_description => %s, p_idempotency_key => %s)"""
)
RESERVE_SQL = """SELECT reservation_id, held_credits, expires_at, available_balance
      FROM keen.reserve_credits(p_user_id => %s, p_estimated_claude_cost_usd => %s,
                                p_session_id => %s, p_ttl => %s, p_idempotency_key => %s)"""
CAPTURE_SQL = (
    "SELECT "
    + TX
    + """ FROM keen.capture_reservation(p_reservation_id => %s,
        p_claude_cost_usd => %s, p_description => %s)"""
)
REFUND_SQL = (
    "SELECT "
    + TX
    + """ FROM keen.refund_credits(p_transaction_id => %s, p_reason => %s,
        p_amount => %s)"""
)
HISTORY_SQL = "SELECT " + TX + " FROM keen.credit_history(p_user_id => %s, p_limit => %s)"
BALANCE_SQL = """SELECT user_id, current_balance, available_balance, lifetime_purchased, lifetime_spent,
           unlimited_credits, daily_limit, monthly_limit, spent_today, spent_this_month
      FROM keen.get_balance(p_user_id => %s)"""
VALIDATE_SQL = """SELECT sufficient, current_balance, required, shortfall, unlimited
      FROM keen.validate_credits(p_user_id => %s, p_claude_cost_usd => %s)"""
VERIFY_SQL = "SELECT user_id, balance, ledger_sum, ok FROM keen.verify_ledger()"
RELEASE_SQL = "SELECT keen.release_reservation(p_reservation_id => %s)"
LIMITS_SQL = "SELECT keen.set_spending_limits(p_user_id => %s, p_daily_limit => %s, p_monthly_limit => %s)"
AUTO_RECHARGE_SQL = """SELECT keen.set_auto_recharge(p_user_id => %s, p_enabled => %s, p_threshold => %s,
        p_amount => %s)"""
RECHARGE = """id, user_id, account_id, status, threshold, requested_amount, balance_at_request,
        triggered_by, purchase_transaction_id, resolution_note, created_at, resolved_at"""
RECHARGE_LIST_SQL = "SELECT " + RECHARGE + " FROM keen.recharge_requests(p_status => %s, p_limit => %s)"
RECHARGE_RESOLVE_SQL = (
    "SELECT "
    + RECHARGE
    + """ FROM keen.resolve_recharge_request(p_request_id => %s,
        p_status => %s, p_purchase_transaction_id => %s, p_note => %s)"""
)


class CreditsApi(Area[M]):
    """tx.credits: see CONTRACT.md "Credits" and docs/credits.md."""

    @query
    def add_credits(
        self, user_id: UUID | str, amount: Decimal | int, description: str, idempotency_key: str | None = None
    ) -> Query[CreditTransaction]:
        """A purchase (admin actor only); a retry with the same key returns the first one."""
        return one(ADD_SQL, (user_id, money(amount), description, idempotency_key), CreditTransaction)

    @query
    def deduct_credits(
        self,
        user_id: UUID | str,
        claude_cost_usd: Decimal | int,
        session_id: UUID | str | None = None,
        description: str = "Agent execution",
        idempotency_key: str | None = None,
    ) -> Query[CreditTransaction]:
        """Charge round(cost * multiplier, 6) credits (recorded, not charged, for an unlimited account)."""
        params = (user_id, money(claude_cost_usd), session_id, description, idempotency_key)
        return one(DEDUCT_SQL, params, CreditTransaction)

    @query
    def reserve_credits(
        self,
        user_id: UUID | str,
        estimated_claude_cost_usd: Decimal | int,
        session_id: UUID | str | None = None,
        ttl: timedelta = timedelta(minutes=15),
        idempotency_key: str | None = None,
    ) -> Query[Reservation]:
        """Hold the estimated charge against the available balance until captured, released or expired."""
        params = (user_id, money(estimated_claude_cost_usd), session_id, ttl, idempotency_key)
        return one(RESERVE_SQL, params, Reservation)

    @query
    def capture_reservation(
        self, reservation_id: UUID | str, claude_cost_usd: Decimal | int, description: str = "Agent execution"
    ) -> Query[CreditTransaction]:
        """Charge the actual cost of a live hold and end it."""
        return one(CAPTURE_SQL, (reservation_id, money(claude_cost_usd), description), CreditTransaction)

    @query
    def release_reservation(self, reservation_id: UUID | str) -> Query[None]:
        """End a live hold with no charge."""
        return void(RELEASE_SQL, (reservation_id,))

    @query
    def refund_credits(
        self, transaction_id: UUID | str, reason: str, amount: Decimal | int | None = None
    ) -> Query[CreditTransaction]:
        """Admin: refund (part of, or with amount None the whole of) a purchase or usage, once."""
        return one(REFUND_SQL, (transaction_id, reason, money(amount)), CreditTransaction)

    @query
    def get_balance(self, user_id: UUID | str) -> Query[Balance]:
        return one(BALANCE_SQL, (user_id,), Balance)

    @query
    def set_spending_limits(
        self, user_id: UUID | str, daily_limit: Decimal | int | None, monthly_limit: Decimal | int | None
    ) -> Query[None]:
        """Daily and monthly limits in credits; None means no limit."""
        return void(LIMITS_SQL, (user_id, money(daily_limit), money(monthly_limit)))

    @query
    def validate_credits(self, user_id: UUID | str, claude_cost_usd: Decimal | int) -> Query[CreditValidation]:
        return one(VALIDATE_SQL, (user_id, money(claude_cost_usd)), CreditValidation)

    @query
    def credit_history(self, user_id: UUID | str, limit: int = 100) -> Query[list[CreditTransaction]]:
        """The account's ledger, newest first (lag-tolerant: a Keen's read pool may serve it)."""
        return rows(HISTORY_SQL, (user_id, limit), CreditTransaction)

    @query
    def verify_ledger(self) -> Query[list[LedgerCheck]]:
        """One row per account (admin actor or maintenance role)."""
        return rows(VERIFY_SQL, None, LedgerCheck)

    @query
    def set_auto_recharge(
        self,
        user_id: UUID | str,
        enabled: bool,
        threshold: Decimal | int | None = None,
        amount: Decimal | int | None = None,
    ) -> Query[None]:
        return void(AUTO_RECHARGE_SQL, (user_id, enabled, money(threshold), money(amount)))

    @query
    def recharge_requests(self, status: str = "pending", limit: int = 100) -> Query[list[RechargeRequest]]:
        """Auto-recharge requests, oldest first (own, or all for an admin or maintenance)."""
        return rows(RECHARGE_LIST_SQL, (status, limit), RechargeRequest)

    @query
    def resolve_recharge_request(
        self,
        request_id: UUID | str,
        status: str,
        purchase_transaction_id: UUID | str | None = None,
        note: str | None = None,
    ) -> Query[RechargeRequest]:
        """Close a pending request: completed (naming the purchase), failed or cancelled."""
        params = (request_id, status, purchase_transaction_id, note)
        return one(RECHARGE_RESOLVE_SQL, params, RechargeRequest)

    # --- usage metering (CONTRACT.md "Usage metering") -----------------------------------------

    @query
    def set_model_price(
        self,
        model: str,
        input_usd_per_mtok: Decimal | int,
        output_usd_per_mtok: Decimal | int,
        cache_write_usd_per_mtok: Decimal | int | None = None,
        cache_read_usd_per_mtok: Decimal | int | None = None,
        effective_from: datetime | None = None,
    ) -> Query[None]:
        """Admin: a new dated price per million tokens (None cache prices: the input price;
        effective_from None: now)."""
        prices: tuple[Decimal | None, ...] = (
            money(input_usd_per_mtok),
            money(output_usd_per_mtok),
            money(cache_write_usd_per_mtok),
            money(cache_read_usd_per_mtok),
        )
        if effective_from is None:
            return void(SET_PRICE_NOW_SQL, (model, *prices))
        return void(SET_PRICE_SQL, (model, *prices, effective_from))

    @query
    def record_llm_usage(
        self,
        session_id: UUID | str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
        request_id: str | None = None,
        latency_ms: int | None = None,
    ) -> Query[LlmUsage]:
        """Price one LLM call and charge it at once; the same request_id returns the first result."""
        params = (
            session_id,
            model,
            input_tokens,
            output_tokens,
            cache_write_tokens,
            cache_read_tokens,
            request_id,
            latency_ms,
        )
        return one(RECORD_USAGE_SQL, params, LlmUsage)

    @query
    def usage_by_model(self, user_id: UUID | str, from_: date, to: date) -> Query[list[ModelUsage]]:
        """A user's LLM calls per model over UTC days from_..to (own, or any for an admin)."""
        return rows(USAGE_BY_MODEL_SQL, (user_id, from_, to), ModelUsage)


@dataclass(frozen=True)
class LlmUsage:
    """What keen.record_llm_usage answers: the usage row, its exact USD cost, the credits charged,
    the ledger row and its balance_after (None when nothing was charged)."""

    usage_id: UUID
    claude_cost_usd: Decimal
    charged_credits: Decimal
    transaction_id: UUID | None
    balance_after: Decimal | None


@dataclass(frozen=True)
class ModelUsage:
    """One model's line of keen.usage_by_model."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    claude_cost_usd: Decimal
    credits: Decimal


SET_PRICE_NOW_SQL = """SELECT keen.set_model_price(p_model => %s, p_input_usd_per_mtok => %s,
        p_output_usd_per_mtok => %s, p_cache_write_usd_per_mtok => %s, p_cache_read_usd_per_mtok => %s)"""
SET_PRICE_SQL = """SELECT keen.set_model_price(p_model => %s, p_input_usd_per_mtok => %s,
        p_output_usd_per_mtok => %s, p_cache_write_usd_per_mtok => %s, p_cache_read_usd_per_mtok => %s,
        p_effective_from => %s)"""
RECORD_USAGE_SQL = """SELECT usage_id, claude_cost_usd, charged_credits, transaction_id, balance_after
      FROM keen.record_llm_usage(p_session_id => %s, p_model => %s, p_input_tokens => %s, p_output_tokens => %s,
                                 p_cache_write_tokens => %s, p_cache_read_tokens => %s, p_request_id => %s,
                                 p_latency_ms => %s)"""
USAGE_BY_MODEL_SQL = """SELECT model, calls, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
           claude_cost_usd, credits
      FROM keen.usage_by_model(p_user_id => %s, p_from => %s, p_to => %s)"""
