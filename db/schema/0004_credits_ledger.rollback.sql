-- Undoes 0004. The repeatable ledger functions (db/functions/credits.sql) read what 0004 added
-- and two return its table's row type, so they go first; the next `keen-db migrate`
-- re-creates them.
DROP FUNCTION IF EXISTS keen.resolve_recharge_request(uuid, text, uuid, text);
DROP FUNCTION IF EXISTS keen.recharge_requests(text, int);
DROP FUNCTION IF EXISTS keen.set_auto_recharge(uuid, boolean, numeric, numeric);
DROP FUNCTION IF EXISTS keen.refund_credits(uuid, text, numeric);
DROP FUNCTION IF EXISTS keen.verify_ledger();
DROP FUNCTION IF EXISTS keen.credit_history(uuid, int);
DROP FUNCTION IF EXISTS keen.validate_credits(uuid, numeric);
DROP FUNCTION IF EXISTS keen.set_spending_limits(uuid, numeric, numeric);
DROP FUNCTION IF EXISTS keen.get_balance(uuid);
DROP FUNCTION IF EXISTS keen.release_reservation(uuid);
DROP FUNCTION IF EXISTS keen.capture_reservation(uuid, numeric, text);
DROP FUNCTION IF EXISTS keen.reserve_credits(uuid, numeric, uuid, interval, text);
DROP FUNCTION IF EXISTS keen.deduct_credits(uuid, numeric, uuid, text, text);
DROP FUNCTION IF EXISTS keen.add_credits(uuid, numeric, text, text);
DROP FUNCTION IF EXISTS keen.credit_hold_result(keen.credit_reservations);
DROP FUNCTION IF EXISTS keen.credit_hold_replay(uuid, text, numeric, uuid);
DROP FUNCTION IF EXISTS keen.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb);
DROP FUNCTION IF EXISTS keen.credit_refresh_holds(uuid);
DROP FUNCTION IF EXISTS keen.credit_request_recharge(keen.credit_transactions);
DROP FUNCTION IF EXISTS keen.credit_check_spend(keen.credit_accounts, numeric, uuid);
DROP FUNCTION IF EXISTS keen.credit_live_holds(uuid, uuid);
DROP FUNCTION IF EXISTS keen.credit_replay(uuid, text, text, numeric, uuid);
DROP FUNCTION IF EXISTS keen.credit_lock(uuid);
DROP FUNCTION IF EXISTS keen.credit_authorize(uuid);
DROP FUNCTION IF EXISTS keen.credit_check_text(text, text);
DROP FUNCTION IF EXISTS keen.credit_check_amount(text, numeric, numeric);
DROP TRIGGER IF EXISTS credit_transactions_append_only ON keen.credit_transactions;
DROP TRIGGER IF EXISTS credit_transactions_no_truncate ON keen.credit_transactions;
DROP FUNCTION IF EXISTS keen.refuse_ledger_change();
DROP TABLE IF EXISTS keen.credit_recharge_requests;
DROP INDEX IF EXISTS keen.credit_transactions_refund_of_key;
ALTER TABLE keen.credit_transactions DROP COLUMN IF EXISTS refund_of;
ALTER TABLE keen.credit_accounts RESET (fillfactor);
ALTER TABLE keen.credit_accounts
    DROP COLUMN IF EXISTS spent_day,
    DROP COLUMN IF EXISTS spent_day_total,
    DROP COLUMN IF EXISTS spent_month,
    DROP COLUMN IF EXISTS spent_month_total,
    DROP COLUMN IF EXISTS live_holds_until;
