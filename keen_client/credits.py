"""The credit ledger: purchases, usage charges (5x markup, admin bypass), holds, refunds,
limits, auto-recharge requests and the ledger check. Every rule is in db/functions/credits.sql;
this module calls, maps rows to frozen dataclasses and passes money as Decimal, never float."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from .client import Tx


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
RECHARGE = """id, user_id, account_id, status, threshold, requested_amount, balance_at_request,
        triggered_by, purchase_transaction_id, resolution_note, created_at, resolved_at"""
RECHARGE_LIST_SQL = "SELECT " + RECHARGE + " FROM keen.recharge_requests(p_status => %s, p_limit => %s)"
RECHARGE_RESOLVE_SQL = (
    "SELECT "
    + RECHARGE
    + """ FROM keen.resolve_recharge_request(p_request_id => %s,
        p_status => %s, p_purchase_transaction_id => %s, p_note => %s)"""
)


class CreditsApi:
    """tx.credits: see CONTRACT.md "Credits" and docs/credits.md."""

    def __init__(self, tx: Tx):
        self.tx = tx

    def add_credits(
        self, user_id: UUID | str, amount: Decimal | int, description: str, idempotency_key: str | None = None
    ) -> CreditTransaction:
        """A purchase (admin actor only); a retry with the same key returns the first one."""
        return self.tx.one(ADD_SQL, (user_id, money(amount), description, idempotency_key), CreditTransaction)

    def deduct_credits(
        self,
        user_id: UUID | str,
        claude_cost_usd: Decimal | int,
        session_id: UUID | str | None = None,
        description: str = "Agent execution",
        idempotency_key: str | None = None,
    ) -> CreditTransaction:
        """Charge round(cost * multiplier, 6) credits (recorded, not charged, for an unlimited account)."""
        return self.tx.one(
            DEDUCT_SQL, (user_id, money(claude_cost_usd), session_id, description, idempotency_key), CreditTransaction
        )

    def reserve_credits(
        self,
        user_id: UUID | str,
        estimated_claude_cost_usd: Decimal | int,
        session_id: UUID | str | None = None,
        ttl: timedelta = timedelta(minutes=15),
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold the estimated charge against the available balance until captured, released or expired."""
        return self.tx.one(
            RESERVE_SQL, (user_id, money(estimated_claude_cost_usd), session_id, ttl, idempotency_key), Reservation
        )

    def capture_reservation(
        self, reservation_id: UUID | str, claude_cost_usd: Decimal | int, description: str = "Agent execution"
    ) -> CreditTransaction:
        """Charge the actual cost of a live hold and end it."""
        return self.tx.one(CAPTURE_SQL, (reservation_id, money(claude_cost_usd), description), CreditTransaction)

    def release_reservation(self, reservation_id: UUID | str) -> None:
        """End a live hold with no charge."""
        self.tx.execute("SELECT keen.release_reservation(p_reservation_id => %s)", (reservation_id,))

    def refund_credits(
        self, transaction_id: UUID | str, reason: str, amount: Decimal | int | None = None
    ) -> CreditTransaction:
        """Admin: refund (part of, or with amount None the whole of) a purchase or usage, once."""
        return self.tx.one(REFUND_SQL, (transaction_id, reason, money(amount)), CreditTransaction)

    def get_balance(self, user_id: UUID | str) -> Balance:
        return self.tx.one(BALANCE_SQL, (user_id,), Balance)

    def set_spending_limits(
        self, user_id: UUID | str, daily_limit: Decimal | int | None, monthly_limit: Decimal | int | None
    ) -> None:
        """Daily and monthly limits in credits; None means no limit."""
        self.tx.execute(
            "SELECT keen.set_spending_limits(p_user_id => %s, p_daily_limit => %s, p_monthly_limit => %s)",
            (user_id, money(daily_limit), money(monthly_limit)),
        )

    def validate_credits(self, user_id: UUID | str, claude_cost_usd: Decimal | int) -> CreditValidation:
        return self.tx.one(VALIDATE_SQL, (user_id, money(claude_cost_usd)), CreditValidation)

    def credit_history(self, user_id: UUID | str, limit: int = 100) -> list[CreditTransaction]:
        """The account's ledger, newest first."""
        return self.tx.all(HISTORY_SQL, (user_id, limit), CreditTransaction)

    def verify_ledger(self) -> list[LedgerCheck]:
        """One row per account (admin actor or maintenance role)."""
        return self.tx.all(VERIFY_SQL, None, LedgerCheck)

    def set_auto_recharge(
        self,
        user_id: UUID | str,
        enabled: bool,
        threshold: Decimal | int | None = None,
        amount: Decimal | int | None = None,
    ) -> None:
        self.tx.execute(
            "SELECT keen.set_auto_recharge(p_user_id => %s, p_enabled => %s, p_threshold => %s, p_amount => %s)",
            (user_id, enabled, money(threshold), money(amount)),
        )

    def recharge_requests(self, status: str = "pending", limit: int = 100) -> list[RechargeRequest]:
        """Auto-recharge requests, oldest first (own, or all for an admin or maintenance)."""
        return self.tx.all(RECHARGE_LIST_SQL, (status, limit), RechargeRequest)

    def resolve_recharge_request(
        self,
        request_id: UUID | str,
        status: str,
        purchase_transaction_id: UUID | str | None = None,
        note: str | None = None,
    ) -> RechargeRequest:
        """Close a pending request: completed (naming the purchase), failed or cancelled."""
        return self.tx.one(RECHARGE_RESOLVE_SQL, (request_id, status, purchase_transaction_id, note), RechargeRequest)
