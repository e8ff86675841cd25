-- credits.sql: the credit ledger. Purchases, usage charges (5x markup, admin bypass), holds,
-- refunds, limits, idempotency, auto-recharge requests and the ledger check.
--
-- Rules every function here keeps:
--   * The balance of an account changes only together with a new keen.credit_transactions row
--     whose amount is the change, in the same statement sequence, under the account row's lock.
--     So the balance always equals the sum of the account's ledger (keen.verify_ledger).
--   * One lock order per account: the account lock (keen_private.credit_lock, an advisory lock keyed by
--     the user), then the credit_accounts row, then the account's reservation rows. Concurrent
--     calls serialize briefly on the account and never deadlock with each other.
--   * Work per call is constant: spending limits read day/month counters kept in the account
--     row; live holds are summed through the partial index only while one may be live
--     (live_holds_until in the future).
--   * Money inputs are refused, never rounded: NULL, NaN, infinities, zero or negative values,
--     more than 6 decimal places (credits) or 12 (a USD cost, an input kept exactly) and absurd
--     sizes are 22023 and nothing is written. Only the charge itself is rounded:
--     keen_private.usage_charge, round(claude_cost_usd * markup_multiplier, 6).
--   * One helper per rule: the markup rate of a user (keen_private.markup_rate), the charge
--     (keen_private.usage_charge), the accounting day and month (keen_private.accounting_day,
--     keen_private.accounting_month, keen_private.period_total: UTC), a hold's expiry judged by
--     the clock (clock_timestamp(), not the transaction's start).
--   * Idempotency keys are looked up first without any lock, so a retry never queues behind
--     the account lock; a retry that races the first call is caught under the lock.

-- ---------------------------------------------------------------------------------------------
-- Internal helpers (owned by keen_owner, executable by nobody else).
-- ---------------------------------------------------------------------------------------------

-- keen_private.markup_rate: the markup multiplier that applies to p_user_id's usage now, as the
-- ledger stores it (numeric(10,4)). Today one platform setting for everyone; a per-user rate is
-- a change here only. Who: the ledger and session functions. Raises 22023 when the setting is
-- missing or not a number (keen.setting_numeric). PL/pgSQL without SET, not SQL: a SQL body that
-- reads a table is never inlined, and a non-inlined SQL function is parsed and planned again in
-- every transaction; PL/pgSQL keeps its plan for the session (docs/credits.md, "Helpers").
CREATE OR REPLACE FUNCTION keen_private.markup_rate(p_user_id uuid)
RETURNS numeric
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    v_rate numeric(10,4);
BEGIN
    SELECT (s.value OPERATOR(pg_catalog.#>>) '{}')::numeric(10,4) INTO v_rate
      FROM keen.settings s
     WHERE s.key = 'markup_multiplier' AND pg_catalog.jsonb_typeof(s.value) = 'number';
    RETURN COALESCE(v_rate, keen.setting_numeric('markup_multiplier')::numeric(10,4));
END
$$;
REVOKE ALL ON FUNCTION keen_private.markup_rate(uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.markup_rate(uuid) IS 'Internal: the markup multiplier of a user''s usage (today the platform setting).';

-- keen_private.usage_charge: the credits a usage of p_claude_cost_usd costs at p_multiplier:
-- round(cost * multiplier, 6), CONTRACT.md section 3. Who: every function that charges or holds.
-- Raises nothing. SQL without SET: inlined into its callers.
CREATE OR REPLACE FUNCTION keen_private.usage_charge(p_claude_cost_usd numeric, p_multiplier numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.round(p_claude_cost_usd * p_multiplier, 6)
$$;
REVOKE ALL ON FUNCTION keen_private.usage_charge(numeric, numeric) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.usage_charge(numeric, numeric) IS 'Internal: round(cost * multiplier, 6), the credits of a usage.';

-- keen_private.accounting_day: the accounting day of a moment: its UTC date (limits, counters,
-- rollups). Who: the ledger and analytics functions. Raises nothing. SQL without SET: inlined.
CREATE OR REPLACE FUNCTION keen_private.accounting_day(p_at timestamptz)
RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (p_at AT TIME ZONE 'UTC')::date
$$;
REVOKE ALL ON FUNCTION keen_private.accounting_day(timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.accounting_day(timestamptz) IS 'Internal: the UTC day of a moment (the accounting day).';

-- keen_private.accounting_day_start: the first moment of the accounting day p_day: 00:00 UTC, so
-- day D is [accounting_day_start(D), accounting_day_start(D + 1)), whatever the session's
-- TimeZone. Who: the ledger, analytics and streaming functions (day ranges). Raises nothing.
-- SQL without SET: inlined (an index range on a timestamptz column stays one).
CREATE OR REPLACE FUNCTION keen_private.accounting_day_start(p_day date)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT p_day::timestamp AT TIME ZONE 'UTC'
$$;
REVOKE ALL ON FUNCTION keen_private.accounting_day_start(date) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.accounting_day_start(date) IS 'Internal: 00:00 UTC of an accounting day (the start of its range).';

-- keen_private.accounting_month: the accounting month of a moment: the first day of its UTC
-- month. Who: the ledger functions. Raises nothing. SQL without SET: inlined.
CREATE OR REPLACE FUNCTION keen_private.accounting_month(p_at timestamptz)
RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.date_trunc('month', p_at AT TIME ZONE 'UTC')::date
$$;
REVOKE ALL ON FUNCTION keen_private.accounting_month(timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.accounting_month(timestamptz) IS 'Internal: the first day of the UTC month of a moment.';

-- keen_private.period_total: what a day or month counter of an account counts in the period
-- p_current: its total when the counter is of that period (or later), else 0 (a counter of
-- an older period means nothing spent in this one). Who: the ledger functions. Raises nothing.
-- SQL without SET: inlined.
CREATE OR REPLACE FUNCTION keen_private.period_total(p_period date, p_total numeric, p_current date)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_period >= p_current THEN p_total ELSE 0 END
$$;
REVOKE ALL ON FUNCTION keen_private.period_total(date, numeric, date) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.period_total(date, numeric, date) IS 'Internal: a day/month usage counter''s total in the current period (0 if older).';

-- keen_private.credit_cost_ok: the rule of a USD cost: a plain positive number of at most
-- 1,000,000 with at most 12 decimal places (a cost is an input kept exactly; only the credits
-- charged are rounded). NaN sorts above every number and -Infinity below, so the range refuses
-- them; NULL gives NULL. The one place the rule is written: credit_check_cost raises by it, and
-- deduct_credits' hot path tests it inline. Who: the ledger functions. Raises nothing.
-- SQL without SET: inlined into its callers.
CREATE OR REPLACE FUNCTION keen_private.credit_cost_ok(p_value numeric)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT p_value > 0 AND p_value <= 1000000 AND p_value = pg_catalog.round(p_value, 12)
$$;
REVOKE ALL ON FUNCTION keen_private.credit_cost_ok(numeric) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_cost_ok(numeric) IS 'Internal: is a USD cost positive, <= 1000000, with at most 12 decimals (NULL: NULL)?';

-- keen_private.credit_check_cost: refuses a USD cost that breaks keen_private.credit_cost_ok:
-- NULL, NaN, +-Infinity, zero or negative, above 1,000,000, or more than 12 decimal places.
-- Who: the ledger and session functions. Raises 22023.
CREATE OR REPLACE FUNCTION keen_private.credit_check_cost(p_what text, p_value numeric)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF COALESCE(keen_private.credit_cost_ok(p_value), false) THEN
        RETURN;
    END IF;
    -- Which part failed, for the message: when rounding to 12 places would make it a cost, only
    -- its decimals are wrong.
    IF keen_private.credit_cost_ok(pg_catalog.round(p_value, 12)) THEN
        RAISE EXCEPTION '% has more than 12 decimal places: %', p_what, p_value
            USING ERRCODE = '22023', HINT = 'costs are refused, not rounded';
    END IF;
    RAISE EXCEPTION '% must be a number above 0 and at most 1000000, got %', p_what, COALESCE(p_value::text, 'NULL')
        USING ERRCODE = '22023';
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_check_cost(text, numeric) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_check_cost(text, numeric) IS 'Internal: 22023 unless a USD cost is positive, <= 1000000, with at most 12 decimals.';

-- keen_private.credit_check_amount: refuses a money input that is not a plain positive number.
-- Who: the ledger functions. Raises 22023 for NULL, NaN, +-Infinity, zero or negative, above
-- p_max, or more than 6 decimal places (refused, not rounded: money is never silently changed).
CREATE OR REPLACE FUNCTION keen_private.credit_check_amount(p_what text, p_value numeric, p_max numeric)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    -- NaN sorts above every number and -Infinity below, so these two tests catch them first.
    IF p_value IS NULL OR p_value > p_max OR p_value <= 0 THEN
        RAISE EXCEPTION '% must be a number above 0 and at most %, got %', p_what, p_max, COALESCE(p_value::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF p_value <> pg_catalog.round(p_value, 6) THEN
        RAISE EXCEPTION '% has more than 6 decimal places: %', p_what, p_value
            USING ERRCODE = '22023', HINT = 'amounts are refused, not rounded';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_check_amount(text, numeric, numeric) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_check_amount(text, numeric, numeric) IS 'Internal: 22023 unless the value is a positive number <= max with at most 6 decimals.';

-- keen_private.credit_description_ok: the rule of a ledger description: not blank, within its
-- size cap (keen_private.size_cap('description')); NULL gives NULL. Written once: credit_check_text
-- raises by it, deduct_credits' hot path tests it inline. Who: the ledger functions. Raises
-- nothing. SQL without SET: inlined into its callers.
CREATE OR REPLACE FUNCTION keen_private.credit_description_ok(p_description text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.btrim(p_description) <> ''
       AND pg_catalog.octet_length(p_description) <= keen_private.size_cap('description')
$$;
REVOKE ALL ON FUNCTION keen_private.credit_description_ok(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_description_ok(text) IS 'Internal: is a ledger description non-blank and within its cap (NULL: NULL)?';

-- keen_private.credit_key_ok: the rule of an idempotency key: absent (NULL), or 1 to 255
-- characters. Written once, like credit_description_ok. Who: the ledger functions. Raises
-- nothing. SQL without SET: inlined into its callers.
CREATE OR REPLACE FUNCTION keen_private.credit_key_ok(p_idempotency_key text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT p_idempotency_key IS NULL OR pg_catalog.length(p_idempotency_key) BETWEEN 1 AND 255
$$;
REVOKE ALL ON FUNCTION keen_private.credit_key_ok(text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_key_ok(text) IS 'Internal: is an idempotency key absent or 1 to 255 characters?';

-- keen_private.credit_check_text: refuses a description or idempotency key that breaks
-- keen_private.credit_description_ok or keen_private.credit_key_ok.
-- Who: the ledger functions. Raises 22023 for a NULL/blank description or one over its size
-- cap (keen_private.require_size names the sizes), and for an idempotency key that is empty or
-- over 255 characters.
CREATE OR REPLACE FUNCTION keen_private.credit_check_text(p_description text, p_idempotency_key text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF NOT COALESCE(keen_private.credit_description_ok(p_description), false) THEN
        PERFORM keen_private.require_size('description', p_description);  -- raises when over the cap
        RAISE EXCEPTION 'a description is required' USING ERRCODE = '22023';
    END IF;
    IF NOT keen_private.credit_key_ok(p_idempotency_key) THEN
        RAISE EXCEPTION 'an idempotency key has 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_check_text(text, text) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_check_text(text, text) IS 'Internal: 22023 for a bad description or idempotency key.';

-- keen_private.actor_acts_for: the one test of "the actor is p_user_id, or an admin": true when
-- there is an actor and it is that user or an active admin (keen.actor_is_admin, asked only
-- when the actor is someone else). Its callers decide the answer: 42501 on an account
-- (credit_authorize), P0002 on a hold or a session whose owner the caller read past row
-- policies (capture_reservation, release_reservation, record_llm_usage).
-- No SET: an invoker helper under its definer caller's pinned path, every name qualified.
-- Who: the ledger functions. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.actor_acts_for(p_user_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_actor uuid := keen.actor_id();
BEGIN
    IF v_actor IS NULL OR p_user_id IS NULL THEN
        RETURN false;
    END IF;
    RETURN v_actor = p_user_id OR keen.actor_is_admin();
END
$$;
REVOKE ALL ON FUNCTION keen_private.actor_acts_for(uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.actor_acts_for(uuid) IS 'Internal: is the actor p_user_id or an admin?';

-- keen_private.credit_authorize: the actor may act on p_user_id's account: it is that user or an
-- admin (keen_private.actor_acts_for).
-- Who: the ledger functions. Raises 22023 for a NULL user id, 42501 otherwise (for any other
-- id, existing or not, so the answer tells nothing about other tenants).
CREATE OR REPLACE FUNCTION keen_private.credit_authorize(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'p_user_id is required' USING ERRCODE = '22023';
    END IF;
    IF NOT keen_private.actor_acts_for(p_user_id) THEN
        RAISE EXCEPTION 'only the account''s owner or an admin may do this' USING ERRCODE = '42501';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_authorize(uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_authorize(uuid) IS 'Internal: 42501 unless the actor is p_user_id or an admin.';

-- keen_private.credit_check_session: the one test that a charge's or a hold's session is
-- p_user_id's. Its callers call it only when they were given a session
-- (`IF p_session_id IS NOT NULL THEN PERFORM ...`): the same test written as one condition with
-- its NOT EXISTS was a query with a subplan, set up in every call, with a session or without.
-- Runs as its caller (deduct_credits and reserve_credits, keen_ledger's, which read the session
-- past row policies). Who: the ledger functions. Raises P0002 when the session is not p_user_id's
-- (missing or another tenant's alike).
CREATE OR REPLACE FUNCTION keen_private.credit_check_session(p_user_id uuid, p_session_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM keen.agent_sessions s WHERE s.user_id = p_user_id AND s.id = p_session_id) THEN
        RAISE EXCEPTION 'session % not found', p_session_id USING ERRCODE = 'P0002';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_check_session(uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_check_session(uuid, uuid) IS 'Internal: P0002 unless the session is p_user_id''s.';

-- keen_private.credit_lock: the account lock: a transaction-level advisory lock keyed by the user
-- (class 1263420242, 'KNCR'; one account per user). Every function that changes an account row
-- takes it first, then the row. Waiting here instead of on the row lock matters: a contended row
-- lock is resumed through EvalPlanQual, which evaluates every row-level-security InitPlan of the
-- statement (the admin and maintenance checks too) while holding the row; queued here, the next
-- statement starts with a fresh snapshot and the row lock is never contended. A hash collision
-- between two users only makes them share a queue.
-- The one definition of the lock, the fast path of a charge included (keen_private.credit_charge
-- used to write it out, for speed). It is kept nearly as cheap as that copy: one plain call more
-- (not measured), PL/pgSQL with neither SET nor SECURITY DEFINER (its plan is cached for the
-- session and no setting is saved and restored per call; it runs as its caller, keen_ledger or keen_owner, both of which may take
-- keen's advisory locks, 0008), and keen_private.require_read_committed, whose SET clause is the
-- costly part, is called only when the isolation level is not READ COMMITTED, to raise.
-- Everything in it is schema-qualified, so the caller's search_path does not matter.
-- Who: the ledger functions. Raises 25000 outside READ COMMITTED
-- (keen_private.require_read_committed).
CREATE OR REPLACE FUNCTION keen_private.credit_lock(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM keen_private.require_read_committed();
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(1263420242, pg_catalog.hashtext(p_user_id::text));
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_lock(uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_lock(uuid) IS 'Internal: the account lock (advisory, per user), taken before the account row.';

-- keen_private.credit_replay: the first result of an idempotency key on p_user_id's account, or a NULL
-- row when the key is new. p_kind 'usage' matches a usage or admin_bypass row with the same
-- Claude cost and session; 'purchase' a purchase of the same amount. Under synchronous replication
-- the row found may be committed on this node only (a primary that crashed while its commit waited
-- for the standby, restarted and recovered it): a replay then writes one WAL record, so that its
-- own commit waits for the standby like a charge's and the replay is never acknowledged alone
-- (docs/scaling.md).
-- Who: the ledger functions (no lock taken). Raises KN005 when the key was used for anything else.
CREATE OR REPLACE FUNCTION keen_private.credit_replay(p_user_id uuid, p_idempotency_key text, p_kind text,
                                              p_value numeric, p_session_id uuid)
RETURNS keen.credit_transactions
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_row keen.credit_transactions;
BEGIN
    SELECT t.* INTO v_row
      FROM keen.credit_accounts a
      JOIN keen.credit_transactions t ON t.account_id = a.id
     WHERE a.user_id = p_user_id AND t.idempotency_key = p_idempotency_key;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF (p_kind = 'usage' AND v_row.transaction_type IN ('usage', 'admin_bypass')
            AND v_row.claude_cost_usd = p_value AND v_row.session_id IS NOT DISTINCT FROM p_session_id)
       OR (p_kind = 'purchase' AND v_row.transaction_type = 'purchase' AND v_row.amount = p_value) THEN
        IF pg_catalog.current_setting('synchronous_standby_names') <> '' THEN
            PERFORM pg_catalog.pg_logical_emit_message(true, 'keen.replay', '');
        END IF;
        RETURN v_row;
    END IF;
    RAISE EXCEPTION 'idempotency key "%" was already used for a different request', p_idempotency_key
        USING ERRCODE = 'KN005', DETAIL = pg_catalog.format('first used by transaction %s', v_row.id);
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_replay(uuid, text, text, numeric, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_replay(uuid, text, text, numeric, uuid) IS 'Internal: first result of an idempotency key, NULL if new, KN005 if it was another request.';

-- keen_private.credit_live_holds: credits held by the account's live holds (status held, not expired),
-- leaving out p_except_reservation (the hold being captured). Reads the partial index of live
-- holds only. Who: the ledger functions. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.credit_live_holds(p_account_id uuid, p_except_reservation uuid)
RETURNS numeric
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    RETURN COALESCE((SELECT pg_catalog.sum(r.held_credits)
                       FROM keen.credit_reservations r
                      WHERE r.account_id = p_account_id
                        AND r.status = 'held'
                        AND r.expires_at > pg_catalog.clock_timestamp()
                        AND r.id IS DISTINCT FROM p_except_reservation), 0);
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_live_holds(uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_live_holds(uuid, uuid) IS 'Internal: sum of the live holds of an account.';

-- keen_private.credit_check_spend: may the account spend p_amount more credits now? Its available
-- balance (balance minus live holds, leaving out p_except_reservation) must cover it, and the
-- usage of the UTC day and month plus live holds plus p_amount must stay within the limits.
-- Returns the live holds it counted. Who: the ledger functions, holding the account lock.
-- Raises KN001 (available balance short), then KN002 (daily, then monthly limit).
CREATE OR REPLACE FUNCTION keen_private.credit_check_spend(p_account keen.credit_accounts, p_amount numeric,
                                                   p_except_reservation uuid)
RETURNS numeric
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_holds numeric := 0;
    v_today date := keen_private.accounting_day(pg_catalog.now());
    v_month date := keen_private.accounting_month(pg_catalog.now());
    v_day_total numeric := keen_private.period_total(p_account.spent_day, p_account.spent_day_total, v_today);
    v_month_total numeric := keen_private.period_total(p_account.spent_month, p_account.spent_month_total, v_month);
BEGIN
    IF p_account.live_holds_until > pg_catalog.clock_timestamp() THEN
        v_holds := keen_private.credit_live_holds(p_account.id, p_except_reservation);
    END IF;
    IF p_account.current_balance - v_holds < p_amount THEN
        RAISE EXCEPTION 'insufficient credits: % available, % required', p_account.current_balance - v_holds, p_amount
            USING ERRCODE = 'KN001';
    END IF;
    IF p_account.daily_limit IS NOT NULL AND v_day_total + v_holds + p_amount > p_account.daily_limit THEN
        RAISE EXCEPTION 'daily spending limit of % would be passed (% spent today, % held, % more)',
                        p_account.daily_limit, v_day_total, v_holds, p_amount
            USING ERRCODE = 'KN002';
    END IF;
    IF p_account.monthly_limit IS NOT NULL AND v_month_total + v_holds + p_amount > p_account.monthly_limit THEN
        RAISE EXCEPTION 'monthly spending limit of % would be passed (% spent this month, % held, % more)',
                        p_account.monthly_limit, v_month_total, v_holds, p_amount
            USING ERRCODE = 'KN002';
    END IF;
    RETURN v_holds;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_check_spend(keen.credit_accounts, numeric, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_check_spend(keen.credit_accounts, numeric, uuid) IS 'Internal: KN001 / KN002 unless the account may spend this much more now.';

-- keen_private.credit_request_recharge: records the pending auto-recharge request of a threshold
-- crossing; while one is pending for the account, further crossings add nothing.
-- Who: the ledger functions, when a usage took the balance from at or above the threshold to
-- below it. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.credit_request_recharge(p_usage keen.credit_transactions)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    INSERT INTO keen.credit_recharge_requests AS q
           (user_id, account_id, threshold, requested_amount, balance_at_request, triggered_by)
    SELECT a.user_id, a.id, a.auto_recharge_threshold, a.auto_recharge_amount, p_usage.balance_after, p_usage.id
      FROM keen.credit_accounts a
     WHERE a.id = p_usage.account_id
       AND a.auto_recharge_threshold IS NOT NULL AND a.auto_recharge_amount IS NOT NULL
    ON CONFLICT (account_id) WHERE status = 'pending' DO NOTHING;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_request_recharge(keen.credit_transactions) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_request_recharge(keen.credit_transactions) IS 'Internal: one pending auto-recharge request per threshold crossing.';

-- keen_private.credit_refresh_holds: after a hold ends, sets live_holds_until to the latest expiry of
-- the holds still live (NULL when none), so deductions take the fast path again at once.
-- Who: capture and release, holding the account lock. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.credit_refresh_holds(p_account_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    UPDATE keen.credit_accounts a
       SET live_holds_until = h.until
      FROM (SELECT pg_catalog.max(r.expires_at) AS until
              FROM keen.credit_reservations r
             WHERE r.account_id = p_account_id AND r.status = 'held' AND r.expires_at > pg_catalog.clock_timestamp()) h
     WHERE a.id = p_account_id AND a.live_holds_until IS DISTINCT FROM h.until;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_refresh_holds(uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_refresh_holds(uuid) IS 'Internal: recompute live_holds_until after a hold ends.';

-- keen_private.credit_charge: the ledger's one locked path of a usage charge. Fast path (no
-- reservation): under the account lock, one statement moves the balance and the day/month
-- counters and appends the ledger row, when the balance and limits cover the charge and no hold
-- can be live (and, only when the charge crossed the auto-recharge threshold, a second one
-- writes the request); a keyed retry that committed meanwhile is answered under the lock first;
-- the row lock is held for that statement and the commit only. General path (everything else: live holds, a limit or balance that refuses, an
-- unlimited account, the capture of a hold, p_reservation_id, whose own hold is left out):
-- locks the account row (unless unlimited), checks, updates, writes the ledger row. Every row
-- it writes on a session emits credits_charged (keen_private.emit_credits_charged).
-- Runs as its caller, with neither SET nor SECURITY DEFINER (a definer call adds a user switch
-- and a settings save and restore per call): the ledger functions owned by keen_ledger (deduct_credits,
-- capture_reservation, record_llm_usage) call it directly; keen_owner's (complete_session)
-- call keen_private.credit_charge_as_ledger, which runs this same body as keen_ledger.
-- keen_owner may not call it directly (it would run under the row policies, as the wrong role).
-- Who: deduct_credits, capture_reservation, record_llm_usage, and credit_charge_as_ledger, after the input and
-- the actor were validated. Raises P0002 (no account), KN001 (available balance
-- short), KN002 (daily or monthly limit), KN005 (idempotency key used for another request).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock), and 23505
-- should a row with the key be written without the account lock (none of keen's writers does).
CREATE OR REPLACE FUNCTION keen_private.credit_charge(p_user_id uuid, p_claude_cost_usd numeric, p_multiplier numeric,
                                              p_charge numeric, p_session_id uuid, p_description text,
                                              p_idempotency_key text, p_reservation_id uuid, p_metadata jsonb)
RETURNS keen.credit_transactions
LANGUAGE plpgsql
AS $$
DECLARE
    v_account keen.credit_accounts;
    v_row keen.credit_transactions;
    v_fast record;
    v_today date := keen_private.accounting_day(pg_catalog.now());
    v_month date := keen_private.accounting_month(pg_catalog.now());
BEGIN
    IF p_reservation_id IS NULL THEN
        -- Fast path: the account lock, then one statement that moves the balance only when it and
        -- the limits cover the charge and no hold can be live.
        PERFORM keen_private.credit_lock(p_user_id);
        -- Under the lock: a retry of the same key that committed since the caller's look-up is
        -- visible now (every writer of a keyed row on a limited account holds this lock), so the
        -- insert below cannot meet its key in the unique index, and needs no ON CONFLICT: an
        -- INSERT ... ON CONFLICT is a speculative insertion (a speculative-insertion lock and
        -- one more WAL record per row), which every deduction paid for under the account lock,
        -- keyed or not. Should a row with the key appear anyway, the index refuses it (23505)
        -- and the whole charge rolls back.
        IF p_idempotency_key IS NOT NULL THEN
            v_row := keen_private.credit_replay(p_user_id, p_idempotency_key, 'usage', p_claude_cost_usd, p_session_id);
            IF v_row.id IS NOT NULL THEN
                RETURN v_row;
            END IF;
        END IF;
        WITH charged AS (
            UPDATE keen.credit_accounts a
               SET current_balance = a.current_balance - p_charge,
                   lifetime_spent = a.lifetime_spent + p_charge,
                   spent_day_total = keen_private.period_total(a.spent_day, a.spent_day_total, v_today) + p_charge,
                   spent_day = GREATEST(a.spent_day, v_today),
                   spent_month_total = keen_private.period_total(a.spent_month, a.spent_month_total, v_month) + p_charge,
                   spent_month = GREATEST(a.spent_month, v_month),
                   updated_at = pg_catalog.now()
             WHERE a.user_id = p_user_id
               AND NOT a.unlimited_credits
               AND (a.live_holds_until IS NULL OR a.live_holds_until <= pg_catalog.clock_timestamp())
               AND a.current_balance >= p_charge
               AND (a.daily_limit IS NULL
                    OR keen_private.period_total(a.spent_day, a.spent_day_total, v_today) + p_charge <= a.daily_limit)
               AND (a.monthly_limit IS NULL
                    OR keen_private.period_total(a.spent_month, a.spent_month_total, v_month) + p_charge <= a.monthly_limit)
            RETURNING a.id, a.current_balance, a.auto_recharge_enabled, a.auto_recharge_threshold
        ), appended AS (
            INSERT INTO keen.credit_transactions AS t
                   (user_id, account_id, transaction_type, amount, balance_after, claude_cost_usd,
                    markup_multiplier, session_id, description, metadata, idempotency_key)
            SELECT p_user_id, c.id, 'usage', -p_charge, c.current_balance, p_claude_cost_usd,
                   p_multiplier, p_session_id, p_description, p_metadata, p_idempotency_key
              FROM charged c
            RETURNING t.*
        )
        -- No row: the fast path did not apply (the general path below decides). crossed: this
        -- usage took the balance from at or above the auto-recharge threshold to below it (the
        -- request is written below, only then: a third data-modifying CTE cost every deduction
        -- its executor set-up, under the account lock).
        SELECT x AS charged_row,
               COALESCE(c.auto_recharge_enabled AND x.balance_after < c.auto_recharge_threshold
                        AND c.current_balance + p_charge >= c.auto_recharge_threshold, false) AS crossed
          INTO v_fast
          FROM charged c CROSS JOIN appended x;
        IF FOUND THEN
            v_row := v_fast.charged_row;
            IF p_session_id IS NOT NULL THEN
                PERFORM keen_private.emit_credits_charged(v_row);
            END IF;
            IF v_fast.crossed THEN
                PERFORM keen_private.credit_request_recharge(v_row);
            END IF;
            RETURN v_row;
        END IF;
    END IF;

    -- General path: anything the fast path left (holds, a short balance or limit, which this
    -- path turns into the error, an unlimited account, a capture, no account).
    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;

    IF v_account.unlimited_credits THEN
        -- Unlimited (the admin's): recorded with cost and multiplier, amount 0, balance
        -- untouched. Nothing to protect, so no lock; the unique key index settles retries.
        INSERT INTO keen.credit_transactions
               (user_id, account_id, transaction_type, amount, balance_after, claude_cost_usd,
                markup_multiplier, session_id, description, metadata, is_admin_bypass, idempotency_key)
        VALUES (p_user_id, v_account.id, 'admin_bypass', 0, v_account.current_balance, p_claude_cost_usd,
                p_multiplier, p_session_id, p_description,
                p_metadata || pg_catalog.jsonb_build_object('waived_credits', p_charge), true, p_idempotency_key)
        ON CONFLICT (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING * INTO v_row;
        IF NOT FOUND THEN
            RETURN keen_private.credit_replay(p_user_id, p_idempotency_key, 'usage', p_claude_cost_usd, p_session_id);
        END IF;
        IF p_session_id IS NOT NULL THEN
            PERFORM keen_private.emit_credits_charged(v_row);
        END IF;
        RETURN v_row;
    END IF;

    -- (A keyed charge came through the fast path, whose look-up under this same lock, still
    -- held, answered any retry that committed before it; captures carry no key.)
    PERFORM keen_private.credit_lock(p_user_id);
    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.id = v_account.id FOR UPDATE;

    PERFORM keen_private.credit_check_spend(v_account, p_charge, p_reservation_id);

    UPDATE keen.credit_accounts a
       SET current_balance = a.current_balance - p_charge,
           lifetime_spent = a.lifetime_spent + p_charge,
           spent_day_total = keen_private.period_total(a.spent_day, a.spent_day_total, v_today) + p_charge,
           spent_day = GREATEST(a.spent_day, v_today),
           spent_month_total = keen_private.period_total(a.spent_month, a.spent_month_total, v_month) + p_charge,
           spent_month = GREATEST(a.spent_month, v_month),
           updated_at = pg_catalog.now()
     WHERE a.id = v_account.id;

    INSERT INTO keen.credit_transactions
           (user_id, account_id, transaction_type, amount, balance_after, claude_cost_usd,
            markup_multiplier, session_id, description, metadata, idempotency_key)
    VALUES (p_user_id, v_account.id, 'usage', -p_charge, v_account.current_balance - p_charge, p_claude_cost_usd,
            p_multiplier, p_session_id, p_description, p_metadata, p_idempotency_key)
    RETURNING * INTO v_row;
    IF p_session_id IS NOT NULL THEN
        PERFORM keen_private.emit_credits_charged(v_row);
    END IF;

    IF v_account.auto_recharge_enabled AND v_row.balance_after < v_account.auto_recharge_threshold
       AND v_account.current_balance >= v_account.auto_recharge_threshold THEN
        PERFORM keen_private.credit_request_recharge(v_row);
    END IF;
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb) IS 'Internal: the locked path of a usage charge (holds, limits, unlimited accounts, captures).';

-- keen_private.credit_charge_as_ledger: keen_private.credit_charge, run as keen_ledger (the owner
-- of the ledger tables' writes, BYPASSRLS) for the functions that are keen_owner's because they
-- also write under the row policies (complete_session).
-- Who: keen_owner's functions, after they validated the input and the actor. Raises what
-- keen_private.credit_charge raises: P0002, KN001, KN002, KN005, 25000, 23505 (a keyed row
-- written without the account lock; none of keen's writers does).
CREATE OR REPLACE FUNCTION keen_private.credit_charge_as_ledger(p_user_id uuid, p_claude_cost_usd numeric,
                                                                p_multiplier numeric, p_charge numeric,
                                                                p_session_id uuid, p_description text,
                                                                p_idempotency_key text, p_reservation_id uuid,
                                                                p_metadata jsonb)
RETURNS keen.credit_transactions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    RETURN keen_private.credit_charge(p_user_id, p_claude_cost_usd, p_multiplier, p_charge, p_session_id,
                                      p_description, p_idempotency_key, p_reservation_id, p_metadata);
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb) IS
    'Internal: keen_private.credit_charge as keen_ledger, for keen_owner''s charging functions.';

-- keen_private.credit_hold_replay: the first hold of an idempotency key on the account, or a NULL row
-- when the key is new. Who: reserve_credits (no lock taken). Raises KN005 when the key was
-- used for a hold of another estimated cost or session.
CREATE OR REPLACE FUNCTION keen_private.credit_hold_replay(p_account_id uuid, p_idempotency_key text,
                                                   p_estimated_claude_cost_usd numeric, p_session_id uuid)
RETURNS keen.credit_reservations
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_res keen.credit_reservations;
BEGIN
    SELECT r.* INTO v_res FROM keen.credit_reservations r
     WHERE r.account_id = p_account_id AND r.idempotency_key = p_idempotency_key;
    IF FOUND AND (v_res.estimated_claude_cost_usd <> p_estimated_claude_cost_usd
                  OR v_res.session_id IS DISTINCT FROM p_session_id) THEN
        RAISE EXCEPTION 'idempotency key "%" was already used for a different hold', p_idempotency_key
            USING ERRCODE = 'KN005', DETAIL = pg_catalog.format('first used by reservation %s', v_res.id);
    END IF;
    RETURN v_res;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_hold_replay(uuid, text, numeric, uuid) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_hold_replay(uuid, text, numeric, uuid) IS 'Internal: first hold of an idempotency key, NULL if new, KN005 if it was another hold.';

-- keen_private.credit_hold_result: what reserve_credits answers for an existing hold: its id, credits
-- held and expiry, and the account's available balance now. Who: reserve_credits. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.credit_hold_result(p_res keen.credit_reservations)
RETURNS TABLE (reservation_id uuid, held_credits numeric, expires_at timestamptz, available_balance numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT p_res.id, p_res.held_credits::numeric, p_res.expires_at,
           a.current_balance - CASE WHEN a.live_holds_until > pg_catalog.clock_timestamp()
                                    THEN keen_private.credit_live_holds(a.id, NULL) ELSE 0 END
      FROM keen.credit_accounts a
     WHERE a.id = p_res.account_id;
END
$$;
REVOKE ALL ON FUNCTION keen_private.credit_hold_result(keen.credit_reservations) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.credit_hold_result(keen.credit_reservations) IS 'Internal: reserve_credits'' answer for an existing hold.';

-- ---------------------------------------------------------------------------------------------
-- The API (CONTRACT.md "Credits").
-- ---------------------------------------------------------------------------------------------

-- keen.add_credits: a purchase: p_amount credits onto p_user_id's account.
-- Who: an admin actor only (the payment side acts as one). A retry with the same idempotency
-- key and amount returns the first purchase and adds nothing; audited as credits/grant.
-- Raises 42501 (not an admin), 22023 (amount not a positive number of at most 1,000,000,000
-- with at most 6 decimals, a bad description or key, or a balance that would pass
-- 1,000,000,000,000), P0002 (no such user), KN005 (key used for another request).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.add_credits(p_user_id uuid, p_amount numeric, p_description text,
                                            p_idempotency_key text DEFAULT NULL)
RETURNS keen.credit_transactions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_row keen.credit_transactions;
    v_account_id uuid;
    v_balance numeric;
BEGIN
    PERFORM keen_private.credit_check_amount('p_amount', p_amount, 1000000000);
    PERFORM keen_private.credit_check_text(p_description, p_idempotency_key);
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'p_user_id is required' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_admin();
    IF p_idempotency_key IS NOT NULL THEN
        v_row := keen_private.credit_replay(p_user_id, p_idempotency_key, 'purchase', p_amount, NULL);
        IF v_row.id IS NOT NULL THEN
            RETURN v_row;
        END IF;
    END IF;

    PERFORM keen_private.credit_lock(p_user_id);
    UPDATE keen.credit_accounts a
       SET current_balance = a.current_balance + p_amount,
           lifetime_purchased = a.lifetime_purchased + p_amount,
           updated_at = pg_catalog.now()
     WHERE a.user_id = p_user_id AND a.current_balance + p_amount <= 1000000000000
    RETURNING a.id, a.current_balance INTO v_account_id, v_balance;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM keen.credit_accounts a WHERE a.user_id = p_user_id) THEN
            RAISE EXCEPTION 'a balance above 1000000000000 credits is refused' USING ERRCODE = '22023';
        END IF;
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;

    INSERT INTO keen.credit_transactions
           (user_id, account_id, transaction_type, amount, balance_after, description, idempotency_key)
    VALUES (p_user_id, v_account_id, 'purchase', p_amount, v_balance, p_description, p_idempotency_key)
    ON CONFLICT (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING * INTO v_row;
    IF NOT FOUND THEN
        -- A retry of the same key committed between the look-up and the lock: take the amount
        -- back out and answer with the first purchase.
        UPDATE keen.credit_accounts a
           SET current_balance = a.current_balance - p_amount,
               lifetime_purchased = a.lifetime_purchased - p_amount
         WHERE a.id = v_account_id;
        RETURN keen_private.credit_replay(p_user_id, p_idempotency_key, 'purchase', p_amount, NULL);
    END IF;

    PERFORM keen_private.write_audit('credits', 'grant', p_user_id,
                             pg_catalog.jsonb_build_object('transaction_id', v_row.id, 'amount', p_amount,
                                                           'balance_after', v_balance, 'description', p_description),
                             'medium');
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.add_credits(uuid, numeric, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.add_credits(uuid, numeric, text, text) TO keen_app;
COMMENT ON FUNCTION keen.add_credits(uuid, numeric, text, text) IS 'Admin: a purchase of credits (idempotent with a key); 42501, 22023, P0002, KN005.';

-- keen.deduct_credits: charges a usage: round(p_claude_cost_usd * markup_multiplier, 6) credits,
-- the multiplier read from keen.settings and stored on the row. An unlimited account (the
-- admin's) records an admin_bypass row: amount 0, cost and multiplier kept, balance untouched.
-- The charge goes through the ledger's one locked path, keen_private.credit_charge: its fast
-- path is one statement that moves the balance (a conditional UPDATE that takes the row lock
-- only when the balance and limits cover the charge and no hold can be live) and appends the
-- ledger row; the lock is held for that statement and the commit, nothing else (a keyed retry
-- that committed since the look-up here is answered under the lock, before it). Anything else
-- (short balance, limit, holds, unlimited, no account) takes its general path, which also
-- decides the error.
-- Who: the account's owner or an admin.
-- Raises 22023 (cost NULL, NaN, infinite, zero or negative, over 1,000,000 USD, more than 12
-- decimals, or a charge that rounds to 0 credits; a bad or oversized description or key, or a
-- key in complete_session's reserved
-- "session-complete:" space), 42501 (another user's account), P0002 (no account, or a
-- session that is not this user's), KN001 (available balance short), KN002 (a daily or monthly
-- limit would be passed), KN005 (the idempotency key was used for another request), 25000
-- (a transaction that is not READ COMMITTED); 42501 for an API key whose scopes do not cover it (credits:write);
-- 23505 only should a row with the key be written without the account lock (none of keen's
-- writers does; keen_private.credit_charge).
CREATE OR REPLACE FUNCTION keen.deduct_credits(p_user_id uuid, p_claude_cost_usd numeric,
                                               p_session_id uuid DEFAULT NULL,
                                               p_description text DEFAULT 'Agent execution',
                                               p_idempotency_key text DEFAULT NULL)
RETURNS keen.credit_transactions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_row keen.credit_transactions;
    v_multiplier numeric(10,4);
    v_charge numeric;
BEGIN
    PERFORM keen_private.require_scope('credits:write');
    -- complete_session's key: nobody may claim it first and so make a session uncompletable.
    IF pg_catalog.left(p_idempotency_key, 17) = 'session-complete:' THEN
        RAISE EXCEPTION 'idempotency keys beginning with "session-complete:" are reserved for keen.complete_session'
            USING ERRCODE = '22023';
    END IF;
    -- The input rules of credit_check_cost and credit_check_text, tested through their predicates
    -- (inlined SQL: no call on the hot path); the checks themselves run, and raise, only when one
    -- fails.
    IF NOT (COALESCE(keen_private.credit_cost_ok(p_claude_cost_usd), false)
            AND COALESCE(keen_private.credit_description_ok(p_description), false)
            AND keen_private.credit_key_ok(p_idempotency_key)) THEN
        PERFORM keen_private.credit_check_cost('p_claude_cost_usd', p_claude_cost_usd);
        PERFORM keen_private.credit_check_text(p_description, p_idempotency_key);
    END IF;
    -- The owner, or else an admin (42501; 22023 for a NULL user): before any lock, so that nobody
    -- can hold another user's account lock.
    IF p_user_id IS DISTINCT FROM keen.actor_id() THEN
        PERFORM keen_private.credit_authorize(p_user_id);
    END IF;
    -- A retry answers from the ledger without touching the account row.
    IF p_idempotency_key IS NOT NULL THEN
        v_row := keen_private.credit_replay(p_user_id, p_idempotency_key, 'usage', p_claude_cost_usd, p_session_id);
        IF v_row.id IS NOT NULL THEN
            RETURN v_row;
        END IF;
    END IF;
    IF p_session_id IS NOT NULL THEN
        PERFORM keen_private.credit_check_session(p_user_id, p_session_id);
    END IF;

    v_multiplier := keen_private.markup_rate(p_user_id);
    v_charge := keen_private.usage_charge(p_claude_cost_usd, v_multiplier);
    IF v_charge <= 0 THEN
        RAISE EXCEPTION 'a cost of % USD rounds to a charge of 0 credits', p_claude_cost_usd USING ERRCODE = '22023';
    END IF;

    RETURN keen_private.credit_charge(p_user_id, p_claude_cost_usd, v_multiplier, v_charge, p_session_id,
                                      p_description, p_idempotency_key, NULL, '{}'::jsonb);
END
$$;
REVOKE ALL ON FUNCTION keen.deduct_credits(uuid, numeric, uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.deduct_credits(uuid, numeric, uuid, text, text) TO keen_app;
COMMENT ON FUNCTION keen.deduct_credits(uuid, numeric, uuid, text, text) IS 'Charges round(cost * multiplier, 6) credits (admin: recorded, not charged); 22023, 42501, P0002, KN001, KN002, KN005.';

-- keen.reserve_credits: a hold of the estimated charge against the available balance (balance
-- minus live holds) and the limits (usage of the UTC day/month plus live holds). The hold
-- counts until captured, released or past expires_at; expiry needs no job. An unlimited account
-- holds 0. A retry with the same idempotency key, cost and session returns the first hold (with
-- the available balance as it is now) and holds nothing more.
-- Who: the account's owner or an admin.
-- Raises 22023 (bad cost as for deduct_credits, a TTL not above 0 or over 7 days, a bad key),
-- 42501, P0002 (no account, or not this user's session), KN001 (available balance short),
-- KN002 (a limit would be passed), KN005 (key used for another request), 42501 for an API key whose scopes do not cover it
-- (credits:write).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.reserve_credits(p_user_id uuid, p_estimated_claude_cost_usd numeric,
                                                p_session_id uuid DEFAULT NULL,
                                                p_ttl interval DEFAULT '15 minutes',
                                                p_idempotency_key text DEFAULT NULL)
RETURNS TABLE (reservation_id uuid, held_credits numeric, expires_at timestamptz, available_balance numeric)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account keen.credit_accounts;
    v_res keen.credit_reservations;
    v_multiplier numeric(10,4);
    v_held numeric;
    v_holds numeric := 0;
BEGIN
    PERFORM keen_private.require_scope('credits:write');
    PERFORM keen_private.credit_check_cost('p_estimated_claude_cost_usd', p_estimated_claude_cost_usd);
    PERFORM keen_private.credit_check_text('a hold', p_idempotency_key);  -- the key only: holds carry no description
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '7 days' THEN
        RAISE EXCEPTION 'p_ttl must be above 0 and at most 7 days' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.credit_authorize(p_user_id);

    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
    -- A retry answers without the account lock.
    IF p_idempotency_key IS NOT NULL THEN
        v_res := keen_private.credit_hold_replay(v_account.id, p_idempotency_key, p_estimated_claude_cost_usd, p_session_id);
        IF v_res.id IS NOT NULL THEN
            RETURN QUERY SELECT * FROM keen_private.credit_hold_result(v_res);
            RETURN;
        END IF;
    END IF;
    IF p_session_id IS NOT NULL THEN
        PERFORM keen_private.credit_check_session(p_user_id, p_session_id);
    END IF;
    PERFORM keen_private.credit_lock(p_user_id);
    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.id = v_account.id FOR UPDATE;
    -- Under the lock: a retry of the same key that committed meanwhile is now visible.
    IF p_idempotency_key IS NOT NULL THEN
        v_res := keen_private.credit_hold_replay(v_account.id, p_idempotency_key, p_estimated_claude_cost_usd, p_session_id);
        IF v_res.id IS NOT NULL THEN
            RETURN QUERY SELECT * FROM keen_private.credit_hold_result(v_res);
            RETURN;
        END IF;
    END IF;

    v_multiplier := keen_private.markup_rate(p_user_id);
    IF v_account.unlimited_credits THEN
        v_held := 0;
    ELSE
        v_held := keen_private.usage_charge(p_estimated_claude_cost_usd, v_multiplier);
        IF v_held <= 0 THEN
            RAISE EXCEPTION 'a cost of % USD rounds to a hold of 0 credits', p_estimated_claude_cost_usd
                USING ERRCODE = '22023';
        END IF;
        v_holds := keen_private.credit_check_spend(v_account, v_held, NULL);
    END IF;

    INSERT INTO keen.credit_reservations AS r
           (user_id, account_id, session_id, estimated_claude_cost_usd, markup_multiplier, held_credits,
            expires_at, idempotency_key)
    VALUES (p_user_id, v_account.id, p_session_id, p_estimated_claude_cost_usd, v_multiplier, v_held,
            pg_catalog.clock_timestamp() + p_ttl, p_idempotency_key)
    RETURNING r.* INTO v_res;
    IF v_held > 0 AND v_account.live_holds_until IS DISTINCT FROM GREATEST(v_account.live_holds_until, v_res.expires_at) THEN
        UPDATE keen.credit_accounts a SET live_holds_until = v_res.expires_at WHERE a.id = v_account.id;
    END IF;

    RETURN QUERY SELECT v_res.id, v_held, v_res.expires_at, (v_account.current_balance - v_holds - v_held)::numeric;
END
$$;
REVOKE ALL ON FUNCTION keen.reserve_credits(uuid, numeric, uuid, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.reserve_credits(uuid, numeric, uuid, interval, text) TO keen_app;
COMMENT ON FUNCTION keen.reserve_credits(uuid, numeric, uuid, interval, text) IS 'Holds the estimated charge against the available balance and limits; 22023, 42501, P0002, KN001, KN002, KN005.';

-- keen.capture_reservation: charges the actual cost of a live hold by the rules of
-- deduct_credits (the multiplier quoted when the hold was placed, which may differ from the
-- estimate either way) and ends the hold, in one step; the ledger row's metadata names the
-- reservation. An unlimited account's capture is an admin_bypass row.
-- Who: the hold's owner or an admin (another tenant's hold is P0002).
-- Raises 22023 (bad cost or description), P0002 (no such hold), KN003 (captured, released or
-- expired), KN001 (the balance, less the other live holds, cannot cover the cost: the hold
-- stays live), KN002 (a limit would be passed), 42501 for an API key whose scopes do not cover
-- it (credits:write).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.capture_reservation(p_reservation_id uuid, p_claude_cost_usd numeric,
                                                    p_description text DEFAULT 'Agent execution')
RETURNS keen.credit_transactions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_res keen.credit_reservations;
    v_row keen.credit_transactions;
    v_charge numeric;
BEGIN
    PERFORM keen_private.require_scope('credits:write');
    PERFORM keen_private.credit_check_cost('p_claude_cost_usd', p_claude_cost_usd);
    PERFORM keen_private.credit_check_text(p_description, NULL);
    -- Another tenant's hold is P0002, like a missing one (the ledger's owner reads past row
    -- policies, so the check is here).
    SELECT r.* INTO v_res FROM keen.credit_reservations r WHERE r.id = p_reservation_id;
    IF NOT FOUND OR NOT keen_private.actor_acts_for(v_res.user_id) THEN
        RAISE EXCEPTION 'reservation % not found', p_reservation_id USING ERRCODE = 'P0002';
    END IF;
    v_charge := keen_private.usage_charge(p_claude_cost_usd, v_res.markup_multiplier);
    IF v_charge <= 0 THEN
        RAISE EXCEPTION 'a cost of % USD rounds to a charge of 0 credits; release the hold instead', p_claude_cost_usd
            USING ERRCODE = '22023';
    END IF;

    -- Account first, then the hold: the one lock order of the ledger.
    PERFORM keen_private.credit_lock(v_res.user_id);
    PERFORM 1 FROM keen.credit_accounts a WHERE a.id = v_res.account_id FOR UPDATE;
    SELECT r.* INTO v_res FROM keen.credit_reservations r WHERE r.id = p_reservation_id;
    IF v_res.status <> 'held' OR v_res.expires_at <= pg_catalog.clock_timestamp() THEN
        RAISE EXCEPTION 'reservation % is not live (%)', p_reservation_id,
                        CASE WHEN v_res.status = 'held' THEN 'expired' ELSE v_res.status END
            USING ERRCODE = 'KN003';
    END IF;

    v_row := keen_private.credit_charge(v_res.user_id, p_claude_cost_usd, v_res.markup_multiplier, v_charge, v_res.session_id,
                                p_description, NULL, v_res.id,
                                pg_catalog.jsonb_build_object('reservation_id', v_res.id, 'held_credits', v_res.held_credits,
                                                              'estimated_claude_cost_usd', v_res.estimated_claude_cost_usd));
    UPDATE keen.credit_reservations r
       SET status = 'captured', ended_at = pg_catalog.now(), transaction_id = v_row.id
     WHERE r.id = v_res.id;
    PERFORM keen_private.credit_refresh_holds(v_res.account_id);
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.capture_reservation(uuid, numeric, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.capture_reservation(uuid, numeric, text) TO keen_app;
COMMENT ON FUNCTION keen.capture_reservation(uuid, numeric, text) IS 'Charges the actual cost of a live hold and ends it; 22023, P0002, KN003, KN001, KN002.';

-- keen.release_reservation: ends a live hold with no charge.
-- Who: the hold's owner or an admin (another tenant's hold is P0002).
-- Raises P0002 (no such hold), KN003 (captured, released or expired), 42501 for an API key
-- whose scopes do not cover it (credits:write).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.release_reservation(p_reservation_id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_res keen.credit_reservations;
BEGIN
    PERFORM keen_private.require_scope('credits:write');
    -- Another tenant's hold is P0002, like a missing one (the ledger's owner reads past row
    -- policies, so the check is here).
    SELECT r.* INTO v_res FROM keen.credit_reservations r WHERE r.id = p_reservation_id;
    IF NOT FOUND OR NOT keen_private.actor_acts_for(v_res.user_id) THEN
        RAISE EXCEPTION 'reservation % not found', p_reservation_id USING ERRCODE = 'P0002';
    END IF;
    -- Account first, then the hold: the one lock order of the ledger.
    PERFORM keen_private.credit_lock(v_res.user_id);
    PERFORM 1 FROM keen.credit_accounts a WHERE a.id = v_res.account_id FOR UPDATE;
    UPDATE keen.credit_reservations r
       SET status = 'released', ended_at = pg_catalog.now()
     WHERE r.id = p_reservation_id AND r.status = 'held' AND r.expires_at > pg_catalog.clock_timestamp()
    RETURNING r.* INTO v_res;
    IF NOT FOUND THEN
        SELECT r.* INTO v_res FROM keen.credit_reservations r WHERE r.id = p_reservation_id;
        RAISE EXCEPTION 'reservation % is not live (%)', p_reservation_id,
                        CASE WHEN v_res.status = 'held' THEN 'expired' ELSE v_res.status END
            USING ERRCODE = 'KN003';
    END IF;
    PERFORM keen_private.credit_refresh_holds(v_res.account_id);
END
$$;
REVOKE ALL ON FUNCTION keen.release_reservation(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.release_reservation(uuid) TO keen_app;
COMMENT ON FUNCTION keen.release_reservation(uuid) IS 'Ends a live hold with no charge; P0002, KN003.';

-- keen.get_balance: the account as the ledger sees it now: balance, available balance
-- (balance minus live holds), lifetime totals, limits and the usage of the current UTC day and
-- month. Who: the account's owner or an admin. Raises 22023 (NULL id), 42501 (another user's
-- account; 42501 for an API key whose scopes do not cover it: credits:read), P0002.
CREATE OR REPLACE FUNCTION keen.get_balance(p_user_id uuid)
RETURNS TABLE (user_id uuid, current_balance numeric, available_balance numeric, lifetime_purchased numeric,
               lifetime_spent numeric, unlimited_credits boolean, daily_limit numeric, monthly_limit numeric,
               spent_today numeric, spent_this_month numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_today date := keen_private.accounting_day(pg_catalog.now());
    v_month date := keen_private.accounting_month(pg_catalog.now());
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    PERFORM keen_private.credit_authorize(p_user_id);
    RETURN QUERY
    SELECT a.user_id, a.current_balance::numeric,
           a.current_balance - CASE WHEN a.live_holds_until > pg_catalog.clock_timestamp()
                                    THEN keen_private.credit_live_holds(a.id, NULL) ELSE 0 END,
           a.lifetime_purchased::numeric, a.lifetime_spent::numeric, a.unlimited_credits,
           a.daily_limit::numeric, a.monthly_limit::numeric,
           keen_private.period_total(a.spent_day, a.spent_day_total, v_today)::numeric,
           keen_private.period_total(a.spent_month, a.spent_month_total, v_month)::numeric
      FROM keen.credit_accounts a
     WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.get_balance(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.get_balance(uuid) TO keen_app;
COMMENT ON FUNCTION keen.get_balance(uuid) IS 'Balance, available balance, lifetime totals, limits and today''s/this month''s usage; 42501, P0002.';

-- keen.set_spending_limits: sets the daily and monthly limits, in credits; NULL means no limit,
-- 0 means no usage at all. Limits count the usage charges of the current UTC day and month plus
-- live holds; lowering one below what is already spent only blocks further usage.
-- Who: the account's owner or an admin, not through an API key with a scope list: no scope
-- covers it (CONTRACT.md "Scopes" lists none for it), and the limits exist to bound what the
-- spending keys (credits:write) can spend, so no such key may lift them.
-- Raises 22023 (a limit that is negative, NaN, infinite, over 1,000,000,000,000 or has more
-- than 6 decimals), 42501 (another user's account; an API key with a scope list), P0002.
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.set_spending_limits(p_user_id uuid, p_daily_limit numeric, p_monthly_limit numeric)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope(NULL);
    IF p_daily_limit IS DISTINCT FROM 0 AND p_daily_limit IS NOT NULL THEN
        PERFORM keen_private.credit_check_amount('p_daily_limit', p_daily_limit, 1000000000000);
    END IF;
    IF p_monthly_limit IS DISTINCT FROM 0 AND p_monthly_limit IS NOT NULL THEN
        PERFORM keen_private.credit_check_amount('p_monthly_limit', p_monthly_limit, 1000000000000);
    END IF;
    PERFORM keen_private.credit_authorize(p_user_id);
    PERFORM keen_private.credit_lock(p_user_id);
    UPDATE keen.credit_accounts a
       SET daily_limit = p_daily_limit, monthly_limit = p_monthly_limit, updated_at = pg_catalog.now()
     WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.set_spending_limits(uuid, numeric, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.set_spending_limits(uuid, numeric, numeric) TO keen_app;
COMMENT ON FUNCTION keen.set_spending_limits(uuid, numeric, numeric) IS 'Daily and monthly limits in credits (NULL: none); not through a scoped API key; 22023, 42501, P0002.';

-- keen.validate_credits: would a usage of p_claude_cost_usd be covered now? No write, no lock.
-- required is the charge at the current multiplier (also for an unlimited account, which is
-- always sufficient with no shortfall); sufficiency is judged on the available balance
-- (balance minus live holds), limits aside. current_balance is the balance itself.
-- Who: the account's owner or an admin. Raises 22023 (bad cost as for deduct_credits), 42501
-- (another user's account; 42501 for an API key whose scopes do not cover it: credits:read), P0002.
CREATE OR REPLACE FUNCTION keen.validate_credits(p_user_id uuid, p_claude_cost_usd numeric)
RETURNS TABLE (sufficient boolean, current_balance numeric, required numeric, shortfall numeric, unlimited boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account keen.credit_accounts;
    v_required numeric;
    v_available numeric;
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    PERFORM keen_private.credit_check_cost('p_claude_cost_usd', p_claude_cost_usd);
    PERFORM keen_private.credit_authorize(p_user_id);
    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
    v_required := keen_private.usage_charge(p_claude_cost_usd, keen_private.markup_rate(p_user_id));
    v_available := v_account.current_balance - CASE WHEN v_account.live_holds_until > pg_catalog.clock_timestamp()
                                                    THEN keen_private.credit_live_holds(v_account.id, NULL) ELSE 0 END;
    RETURN QUERY SELECT v_account.unlimited_credits OR v_available >= v_required,
                        v_account.current_balance::numeric,
                        v_required,
                        CASE WHEN v_account.unlimited_credits THEN 0 ELSE GREATEST(v_required - v_available, 0) END,
                        v_account.unlimited_credits;
END
$$;
REVOKE ALL ON FUNCTION keen.validate_credits(uuid, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.validate_credits(uuid, numeric) TO keen_app;
COMMENT ON FUNCTION keen.validate_credits(uuid, numeric) IS 'Would this cost be covered now? No write; 22023, 42501, P0002.';

-- keen.credit_history: the account's ledger rows, newest first.
-- Who: the account's owner or an admin. Raises 22023 (p_limit not between 1 and 1000), 42501
-- (another user's account; 42501 for an API key whose scopes do not cover it: credits:read), P0002 (no account).
CREATE OR REPLACE FUNCTION keen.credit_history(p_user_id uuid, p_limit int DEFAULT 100)
RETURNS SETOF keen.credit_transactions
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.credit_authorize(p_user_id);
    IF NOT EXISTS (SELECT 1 FROM keen.credit_accounts a WHERE a.user_id = p_user_id) THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
    SELECT t.* FROM keen.credit_transactions t
     WHERE t.account_id = (SELECT a.id FROM keen.credit_accounts a WHERE a.user_id = p_user_id)
     ORDER BY t.entry_no DESC
     LIMIT p_limit;
END
$$;
REVOKE ALL ON FUNCTION keen.credit_history(uuid, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.credit_history(uuid, int) TO keen_app;
COMMENT ON FUNCTION keen.credit_history(uuid, int) IS 'The account''s ledger, newest first; 22023, 42501, P0002.';

-- keen.verify_ledger: one row per account: ok when its balance equals the sum of its ledger
-- rows' amounts. Reads everything (the maintenance role and admins see every tenant).
-- Who: an admin actor or the maintenance role. Raises 42501 for anyone else.
CREATE OR REPLACE FUNCTION keen.verify_ledger()
RETURNS TABLE (user_id uuid, balance numeric, ledger_sum numeric, ok boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may verify the ledger');
    RETURN QUERY
    SELECT a.user_id, a.current_balance::numeric, COALESCE(s.total, 0)::numeric,
           a.current_balance = COALESCE(s.total, 0)
      FROM keen.credit_accounts a
      LEFT JOIN (SELECT t.account_id, pg_catalog.sum(t.amount) AS total
                   FROM keen.credit_transactions t
                  GROUP BY t.account_id) s ON s.account_id = a.id
     ORDER BY a.user_id;
END
$$;
REVOKE ALL ON FUNCTION keen.verify_ledger() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.verify_ledger() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.verify_ledger() IS 'Per account: balance = sum of its ledger? Admin actor or maintenance role; 42501.';

-- keen.refund_credits: gives back (a part of) a purchase or a usage as a new 'refund' row that
-- points at it (refund_of); the original row is never edited. p_amount is in credits, NULL
-- meaning the whole amount. Refunding a usage adds the credits back (amount > 0, lifetime_spent
-- goes down; the day/month usage counters are not reopened); refunding a purchase takes them
-- out (amount < 0, lifetime_purchased goes down) and needs them available. A transaction is
-- refunded at most once, in part or whole. Audited as credits/refund.
-- Who: an admin actor only.
-- Raises 42501, 22023 (no reason, an amount that is not a positive 6-decimal number or is more
-- than the original, a transaction that is not a purchase or usage), P0002 (no such
-- transaction), 23505 (already refunded), KN001 (a purchase refund the available balance
-- cannot cover).
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.refund_credits(p_transaction_id uuid, p_reason text, p_amount numeric DEFAULT NULL)
RETURNS keen.credit_transactions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_original keen.credit_transactions;
    v_account keen.credit_accounts;
    v_row keen.credit_transactions;
    v_amount numeric;
    v_delta numeric;
    v_holds numeric := 0;
BEGIN
    PERFORM keen_private.credit_check_text(p_reason, NULL);
    IF p_amount IS NOT NULL THEN
        PERFORM keen_private.credit_check_amount('p_amount', p_amount, 1000000000);
    END IF;
    PERFORM keen_private.require_admin();
    SELECT t.* INTO v_original FROM keen.credit_transactions t WHERE t.id = p_transaction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % not found', p_transaction_id USING ERRCODE = 'P0002';
    END IF;
    IF v_original.transaction_type NOT IN ('purchase', 'usage') THEN
        RAISE EXCEPTION 'only purchases and usage charges can be refunded, not %', v_original.transaction_type
            USING ERRCODE = '22023';
    END IF;
    v_amount := COALESCE(p_amount, pg_catalog.abs(v_original.amount));
    IF v_amount > pg_catalog.abs(v_original.amount) THEN
        RAISE EXCEPTION 'a refund of % is more than the % of the original', v_amount, pg_catalog.abs(v_original.amount)
            USING ERRCODE = '22023';
    END IF;
    v_delta := CASE WHEN v_original.transaction_type = 'usage' THEN v_amount ELSE -v_amount END;

    PERFORM keen_private.credit_lock(v_original.user_id);
    SELECT a.* INTO v_account FROM keen.credit_accounts a WHERE a.id = v_original.account_id FOR UPDATE;
    -- Under the lock: a concurrent refund of the same transaction has committed or never will.
    IF EXISTS (SELECT 1 FROM keen.credit_transactions t WHERE t.refund_of = v_original.id) THEN
        RAISE EXCEPTION 'transaction % was already refunded', v_original.id USING ERRCODE = '23505';
    END IF;
    IF v_delta < 0 THEN
        IF v_account.live_holds_until > pg_catalog.clock_timestamp() THEN
            v_holds := keen_private.credit_live_holds(v_account.id, NULL);
        END IF;
        IF v_account.current_balance - v_holds < v_amount THEN
            RAISE EXCEPTION 'insufficient credits to refund the purchase: % available, % to refund',
                            v_account.current_balance - v_holds, v_amount
                USING ERRCODE = 'KN001';
        END IF;
    ELSIF v_account.current_balance + v_delta > 1000000000000 THEN
        RAISE EXCEPTION 'a balance above 1000000000000 credits is refused' USING ERRCODE = '22023';
    END IF;

    UPDATE keen.credit_accounts a
       SET current_balance = a.current_balance + v_delta,
           lifetime_purchased = a.lifetime_purchased - CASE WHEN v_delta < 0 THEN v_amount ELSE 0 END,
           lifetime_spent = a.lifetime_spent - CASE WHEN v_delta > 0 THEN v_amount ELSE 0 END,
           updated_at = pg_catalog.now()
     WHERE a.id = v_account.id;
    INSERT INTO keen.credit_transactions
           (user_id, account_id, transaction_type, amount, balance_after, description, metadata, refund_of)
    VALUES (v_original.user_id, v_account.id, 'refund', v_delta, v_account.current_balance + v_delta, p_reason,
            pg_catalog.jsonb_build_object('refunded_type', v_original.transaction_type,
                                          'refunded_amount', v_original.amount,
                                          'partial', v_amount < pg_catalog.abs(v_original.amount)),
            v_original.id)
    RETURNING * INTO v_row;

    PERFORM keen_private.write_audit('credits', 'refund', v_original.user_id,
                             pg_catalog.jsonb_build_object('transaction_id', v_row.id, 'refund_of', v_original.id,
                                                           'amount', v_delta, 'reason', p_reason),
                             'medium');
    RETURN v_row;
END
$$;
REVOKE ALL ON FUNCTION keen.refund_credits(uuid, text, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.refund_credits(uuid, text, numeric) TO keen_app;
COMMENT ON FUNCTION keen.refund_credits(uuid, text, numeric) IS 'Admin: a refund row for (part of) a purchase or usage, at most once; 42501, 22023, P0002, 23505, KN001.';

-- ---------------------------------------------------------------------------------------------
-- Auto-recharge requests (beyond CONTRACT.md).
-- ---------------------------------------------------------------------------------------------

-- keen.set_auto_recharge: switches auto-recharge on or off; p_threshold and p_amount (credits)
-- replace the current values when given. Who: the account's owner or an admin, not through an
-- API key with a scope list (no scope covers it: it decides what the account buys, like the
-- limits of set_spending_limits).
-- Raises 22023 (NULL p_enabled, a threshold that is negative or malformed, an amount that is
-- not a positive 6-decimal number of at most 1,000,000,000), 42501 (another user's account; an
-- API key with a scope list), P0002.
-- Also 25000 outside READ COMMITTED (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.set_auto_recharge(p_user_id uuid, p_enabled boolean,
                                                  p_threshold numeric DEFAULT NULL, p_amount numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope(NULL);
    IF p_enabled IS NULL THEN
        RAISE EXCEPTION 'p_enabled is required' USING ERRCODE = '22023';
    END IF;
    IF p_threshold IS DISTINCT FROM 0 AND p_threshold IS NOT NULL THEN
        PERFORM keen_private.credit_check_amount('p_threshold', p_threshold, 1000000000);
    END IF;
    IF p_amount IS NOT NULL THEN
        PERFORM keen_private.credit_check_amount('p_amount', p_amount, 1000000000);
    END IF;
    PERFORM keen_private.credit_authorize(p_user_id);
    PERFORM keen_private.credit_lock(p_user_id);
    UPDATE keen.credit_accounts a
       SET auto_recharge_enabled = p_enabled,
           auto_recharge_threshold = COALESCE(p_threshold, a.auto_recharge_threshold),
           auto_recharge_amount = COALESCE(p_amount, a.auto_recharge_amount),
           updated_at = pg_catalog.now()
     WHERE a.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.set_auto_recharge(uuid, boolean, numeric, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.set_auto_recharge(uuid, boolean, numeric, numeric) TO keen_app;
COMMENT ON FUNCTION keen.set_auto_recharge(uuid, boolean, numeric, numeric) IS 'Auto-recharge on/off, threshold and amount; not through a scoped API key; 22023, 42501, P0002.';

-- keen.recharge_requests: auto-recharge requests with the given status, oldest first: the
-- payment side's queue. A user sees its own; an admin or the maintenance role sees all.
-- Who: keen_app (under the row policies) and keen_maintenance; through an API key with a scope
-- list, only with credits:read (it reads the account's credit records, like credit_history).
-- Raises 22023 (unknown status, p_limit not between 1 and 1000), 42501 for an API key whose
-- scopes do not cover it.
CREATE OR REPLACE FUNCTION keen.recharge_requests(p_status text DEFAULT 'pending', p_limit int DEFAULT 100)
RETURNS SETOF keen.credit_recharge_requests
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    IF p_status IS NULL OR p_status NOT IN ('pending', 'completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'p_status is one of pending, completed, failed, cancelled' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT q.* FROM keen.credit_recharge_requests q
     WHERE q.status = p_status
     ORDER BY q.created_at, q.id
     LIMIT p_limit;
END
$$;
REVOKE ALL ON FUNCTION keen.recharge_requests(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.recharge_requests(text, int) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.recharge_requests(text, int) IS 'Auto-recharge requests by status, oldest first (own, or all for admin/maintenance); 22023, 42501.';

-- keen.resolve_recharge_request: the payment side closes a pending request: completed (with
-- the purchase it made through add_credits), failed or cancelled. After that, the account's
-- next threshold crossing records a new request.
-- Who: an admin actor or the maintenance role. Raises 42501, P0002 (no such request), 22023
-- (unknown status, a request no longer pending, or completed without naming a purchase
-- transaction of the same user).
CREATE OR REPLACE FUNCTION keen.resolve_recharge_request(p_request_id uuid, p_status text,
                                                         p_purchase_transaction_id uuid DEFAULT NULL,
                                                         p_note text DEFAULT NULL)
RETURNS keen.credit_recharge_requests
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_request keen.credit_recharge_requests;
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may resolve recharge requests');
    IF p_status IS NULL OR p_status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'p_status is one of completed, failed, cancelled' USING ERRCODE = '22023';
    END IF;
    SELECT q.* INTO v_request FROM keen.credit_recharge_requests q WHERE q.id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recharge request % not found', p_request_id USING ERRCODE = 'P0002';
    END IF;
    IF v_request.status <> 'pending' THEN
        RAISE EXCEPTION 'recharge request % is already %', p_request_id, v_request.status USING ERRCODE = '22023';
    END IF;
    IF p_status = 'completed' AND NOT EXISTS (
        SELECT 1 FROM keen.credit_transactions t
         WHERE t.id = p_purchase_transaction_id AND t.user_id = v_request.user_id AND t.transaction_type = 'purchase'
    ) THEN
        RAISE EXCEPTION 'a completed request needs the purchase transaction of the same user' USING ERRCODE = '22023';
    END IF;
    UPDATE keen.credit_recharge_requests q
       SET status = p_status, resolved_at = pg_catalog.now(), resolution_note = p_note,
           purchase_transaction_id = CASE WHEN p_status = 'completed' THEN p_purchase_transaction_id END
     WHERE q.id = p_request_id
    RETURNING q.* INTO v_request;
    RETURN v_request;
END
$$;
REVOKE ALL ON FUNCTION keen.resolve_recharge_request(uuid, text, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.resolve_recharge_request(uuid, text, uuid, text) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.resolve_recharge_request(uuid, text, uuid, text) IS 'Closes a pending auto-recharge request; 42501, P0002, 22023.';

-- ---------------------------------------------------------------------------------------------
-- Usage metering (CONTRACT.md "Usage metering"): dated prices, each LLM call priced and charged.
-- ---------------------------------------------------------------------------------------------

-- keen_private.check_price: refuses a price per million tokens that is not a plain number of 0
-- to 100,000 USD with at most 6 decimal places (so that tokens x price / 10^6 is exact at 12).
-- Who: keen.set_model_price. Raises 22023.
CREATE OR REPLACE FUNCTION keen_private.check_price(p_what text, p_value numeric)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_value IS NULL OR p_value > 100000 OR p_value < 0 THEN
        RAISE EXCEPTION '% must be a price of 0 to 100000 USD per million tokens, got %', p_what, COALESCE(p_value::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF p_value <> pg_catalog.round(p_value, 6) THEN
        RAISE EXCEPTION '% has more than 6 decimal places: %', p_what, p_value
            USING ERRCODE = '22023', HINT = 'prices are refused, not rounded';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.check_price(text, numeric) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.check_price(text, numeric) IS 'Internal: 22023 unless a per-million-token price is 0..100000 with at most 6 decimals.';

-- keen.set_model_price: a new dated price of a model, in USD per million tokens; NULL cache
-- prices mean the input price. A new row every time: usage already recorded keeps the price it
-- was charged at (keen.llm_usage.price_id), whatever the new row's effective_from. Audited as
-- credits/set_model_price.
-- Who: an admin actor only. Raises 42501 (not an admin), 22023 (a model name that is not 1 to
-- 128 letters, digits and . _ : / @ -; a price that is NULL, negative, over 100,000 or has more
-- than 6 decimals; a NULL or infinite p_effective_from), 23505 (the model already has a price
-- from that very moment).
CREATE OR REPLACE FUNCTION keen.set_model_price(p_model text, p_input_usd_per_mtok numeric,
                                                p_output_usd_per_mtok numeric,
                                                p_cache_write_usd_per_mtok numeric DEFAULT NULL,
                                                p_cache_read_usd_per_mtok numeric DEFAULT NULL,
                                                p_effective_from timestamptz DEFAULT pg_catalog.now())
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_actor uuid := keen_private.require_admin();
    v_id uuid;
BEGIN
    IF p_model IS NULL OR p_model !~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$' THEN
        RAISE EXCEPTION 'a model name has 1 to 128 letters, digits and . _ : / @ -' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.check_price('p_input_usd_per_mtok', p_input_usd_per_mtok);
    PERFORM keen_private.check_price('p_output_usd_per_mtok', p_output_usd_per_mtok);
    PERFORM keen_private.check_price('p_cache_write_usd_per_mtok', COALESCE(p_cache_write_usd_per_mtok, p_input_usd_per_mtok));
    PERFORM keen_private.check_price('p_cache_read_usd_per_mtok', COALESCE(p_cache_read_usd_per_mtok, p_input_usd_per_mtok));
    IF p_effective_from IS NULL OR p_effective_from IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'p_effective_from must be a moment' USING ERRCODE = '22023';
    END IF;
    INSERT INTO keen.model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cache_write_usd_per_mtok,
                                   cache_read_usd_per_mtok, effective_from, created_by)
    VALUES (p_model, p_input_usd_per_mtok, p_output_usd_per_mtok,
            COALESCE(p_cache_write_usd_per_mtok, p_input_usd_per_mtok),
            COALESCE(p_cache_read_usd_per_mtok, p_input_usd_per_mtok), p_effective_from, v_actor)
    RETURNING id INTO v_id;
    PERFORM keen_private.write_audit('credits', 'set_model_price', NULL,
                                     pg_catalog.jsonb_build_object(
                                         'price_id', v_id, 'model', p_model,
                                         'input_usd_per_mtok', p_input_usd_per_mtok,
                                         'output_usd_per_mtok', p_output_usd_per_mtok,
                                         'cache_write_usd_per_mtok', COALESCE(p_cache_write_usd_per_mtok, p_input_usd_per_mtok),
                                         'cache_read_usd_per_mtok', COALESCE(p_cache_read_usd_per_mtok, p_input_usd_per_mtok),
                                         'effective_from', p_effective_from),
                                     'medium');
END
$$;
REVOKE ALL ON FUNCTION keen.set_model_price(text, numeric, numeric, numeric, numeric, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.set_model_price(text, numeric, numeric, numeric, numeric, timestamptz) TO keen_app;
COMMENT ON FUNCTION keen.set_model_price(text, numeric, numeric, numeric, numeric, timestamptz) IS
    'Admin: a new dated price of a model (USD per million tokens), audited; 42501, 22023, 23505.';

-- keen_private.llm_usage_result: what record_llm_usage answers for a recorded call: the usage, its
-- cost, the credits charged, the ledger row and its balance_after (NULL when nothing was
-- charged: a cost that rounds to 0 credits). Who: record_llm_usage. Raises nothing.
CREATE OR REPLACE FUNCTION keen_private.llm_usage_result(p_usage keen.llm_usage)
RETURNS TABLE (usage_id uuid, claude_cost_usd numeric, charged_credits numeric, transaction_id uuid, balance_after numeric)
LANGUAGE sql STABLE
AS $$
    SELECT p_usage.id, p_usage.claude_cost_usd, p_usage.charged_credits, p_usage.transaction_id,
           (SELECT t.balance_after::numeric FROM keen.credit_transactions t WHERE t.id = p_usage.transaction_id)
$$;
REVOKE ALL ON FUNCTION keen_private.llm_usage_result(keen.llm_usage) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.llm_usage_result(keen.llm_usage) IS 'Internal: record_llm_usage''s answer for a recorded call.';

-- keen_private.llm_usage_replay: the first recording of a request id on a session, or a NULL row
-- when it is new. Who: record_llm_usage. Raises KN005 when the id was recorded with another
-- model or other token counts.
CREATE OR REPLACE FUNCTION keen_private.llm_usage_replay(p_session_id uuid, p_request_id text, p_model text,
                                                         p_input_tokens bigint, p_output_tokens bigint,
                                                         p_cache_write_tokens bigint, p_cache_read_tokens bigint)
RETURNS keen.llm_usage
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_usage keen.llm_usage;
BEGIN
    SELECT u.* INTO v_usage FROM keen.llm_usage u WHERE u.session_id = p_session_id AND u.request_id = p_request_id;
    IF FOUND AND (v_usage.model, v_usage.input_tokens, v_usage.output_tokens, v_usage.cache_write_tokens, v_usage.cache_read_tokens)
                 IS DISTINCT FROM (p_model, p_input_tokens, p_output_tokens, p_cache_write_tokens, p_cache_read_tokens) THEN
        RAISE EXCEPTION 'request id "%" was already recorded on this session with other counts', p_request_id
            USING ERRCODE = 'KN005', DETAIL = pg_catalog.format('first recorded as usage %s', v_usage.id);
    END IF;
    RETURN v_usage;
END
$$;
REVOKE ALL ON FUNCTION keen_private.llm_usage_replay(uuid, text, text, bigint, bigint, bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.llm_usage_replay(uuid, text, text, bigint, bigint, bigint, bigint) IS
    'Internal: first recording of a request id on a session, NULL if new, KN005 if the counts differ.';

-- keen.record_llm_usage: one LLM call of a session, priced and charged at once. The cost is the
-- token counts times the model's price in force (the newest keen.model_prices row whose
-- effective_from has come), divided by 10^6, kept exactly (prices have at most 6 decimals, so
-- at most 12); the charge is keen_private.usage_charge at the owner's markup rate, through the
-- ledger's one locked path (keen_private.credit_charge: admin bypass recorded and not charged,
-- live holds and limits counted, KN001/KN002), in this transaction; the session's
-- claude_cost_usd and keen_cost_credits grow by the cost and the credits charged (0 for an
-- admin bypass). A cost whose charge rounds to 0 credits is recorded with no ledger row. The
-- same p_request_id on the session returns the first result and charges nothing more. Calls of
-- one session serialize on the session row, taken (by the cost's UPDATE) before the account,
-- complete_session's order; a retry racing the first call waits there and then answers with
-- the first call's result. The owner's markup rate is read once (keen_private.markup_rate) and
-- that one rate prices both the session's keen_cost_credits and the ledger charge. Owned by
-- keen_ledger (BYPASSRLS; its privileges on sessions, prices and usage rows are db/schema/0021):
-- the row policies are not re-run in each of its statements; it checks the actor once, against
-- the session's owner, before it reads or writes anything of the session.
-- A session that has stopped (completed, failed or cancelled) is still charged: a call reported
-- after the stop was made, and paid to the model's provider, while the session ran; refusing it
-- would lose real cost, and stopping a run never undoes what it used. So there is no state
-- check here (docs/credits.md, "Metering").
-- Who: the session's owner or an admin (who charges the owner); another tenant's session is
-- P0002. Raises 22023 (an unknown model, a NULL or negative count, a count over 10^12, a
-- negative latency, an oversized request id, a cost over 1,000,000 USD), 28000 (no actor),
-- 42501 for an API key whose scopes do not cover it (credits:write), P0002, KN001, KN002, KN005
-- (the request id was recorded with other counts), 25000 (not READ COMMITTED, from the account
-- lock).
CREATE OR REPLACE FUNCTION keen.record_llm_usage(p_session_id uuid, p_model text, p_input_tokens bigint,
                                                 p_output_tokens bigint, p_cache_write_tokens bigint DEFAULT 0,
                                                 p_cache_read_tokens bigint DEFAULT 0,
                                                 p_request_id text DEFAULT NULL, p_latency_ms int DEFAULT NULL)
RETURNS TABLE (usage_id uuid, claude_cost_usd numeric, charged_credits numeric, transaction_id uuid, balance_after numeric)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_user uuid;
    v_usage keen.llm_usage;
    v_price keen.model_prices;
    v_cost numeric;
    v_multiplier numeric(10,4);
    v_charge numeric;
    v_row keen.credit_transactions;
BEGIN
    PERFORM keen_private.require_scope('credits:write');
    IF p_session_id IS NULL OR p_model IS NULL
       OR p_input_tokens IS NULL OR p_output_tokens IS NULL OR p_cache_write_tokens IS NULL OR p_cache_read_tokens IS NULL
       OR LEAST(p_input_tokens, p_output_tokens, p_cache_write_tokens, p_cache_read_tokens) < 0
       OR GREATEST(p_input_tokens, p_output_tokens, p_cache_write_tokens, p_cache_read_tokens) > 1000000000000
       OR p_latency_ms < 0 OR p_request_id = '' THEN
        RAISE EXCEPTION 'a session, a model and token counts of 0 to 10^12 are required (latency >= 0, request id not empty)'
            USING ERRCODE = '22023';
    END IF;
    IF p_request_id IS NOT NULL THEN
        PERFORM keen_private.require_size('name', p_request_id);
    END IF;
    -- The session's owner, whose rate prices the call: read once, here. This function runs as
    -- keen_ledger, without the row policies, so it authorizes explicitly, before it reads
    -- anything else of the session: no actor is 28000 (keen_private.require_actor, asked only
    -- then, so that the actor is verified once per call), another tenant's session P0002, the
    -- same answer as a session that does not exist; no lock is taken.
    SELECT s.user_id INTO v_user FROM keen.agent_sessions s WHERE s.id = p_session_id;
    IF NOT FOUND OR NOT keen_private.actor_acts_for(v_user) THEN
        PERFORM keen_private.require_actor();
        RAISE EXCEPTION 'session % not found', p_session_id USING ERRCODE = 'P0002';
    END IF;
    -- A retry answers from the usage row, without any lock.
    IF p_request_id IS NOT NULL THEN
        v_usage := keen_private.llm_usage_replay(p_session_id, p_request_id, p_model, p_input_tokens, p_output_tokens,
                                                 p_cache_write_tokens, p_cache_read_tokens);
        IF v_usage.id IS NOT NULL THEN
            RETURN QUERY SELECT * FROM keen_private.llm_usage_result(v_usage);
            RETURN;
        END IF;
    END IF;
    SELECT pr.* INTO v_price
      FROM keen.model_prices pr
     WHERE pr.model = p_model AND pr.effective_from <= pg_catalog.now()
     ORDER BY pr.effective_from DESC
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no price for model "%"', pg_catalog.left(p_model, 128)
            USING ERRCODE = '22023', HINT = 'an admin sets one with keen.set_model_price';
    END IF;
    v_cost := pg_catalog.round((p_input_tokens * v_price.input_usd_per_mtok
                                + p_output_tokens * v_price.output_usd_per_mtok
                                + p_cache_write_tokens * v_price.cache_write_usd_per_mtok
                                + p_cache_read_tokens * v_price.cache_read_usd_per_mtok) / 1000000, 12);
    IF v_cost > 1000000 THEN
        RAISE EXCEPTION 'a call of % USD is refused (at most 1000000)', v_cost USING ERRCODE = '22023';
    END IF;

    v_multiplier := keen_private.markup_rate(v_user);
    v_charge := keen_private.usage_charge(v_cost, v_multiplier);
    -- The session row first (complete_session's lock order: session, then account), and the
    -- cost added in the same statement: the credits are what credit_charge will take (0 for an
    -- unlimited account); if it refuses, the whole call rolls back.
    UPDATE keen.agent_sessions s
       SET claude_cost_usd = s.claude_cost_usd + v_cost,
           keen_cost_credits = s.keen_cost_credits + CASE WHEN a.unlimited_credits THEN 0 ELSE v_charge END,
           last_activity_at = pg_catalog.clock_timestamp()
      FROM keen.credit_accounts a
     WHERE s.id = p_session_id AND a.user_id = s.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % not found', p_session_id USING ERRCODE = 'P0002';
    END IF;
    -- Under the session lock: a retry of the same request id that committed meanwhile is
    -- visible; its answer stands and this call's addition is taken back.
    IF p_request_id IS NOT NULL THEN
        v_usage := keen_private.llm_usage_replay(p_session_id, p_request_id, p_model, p_input_tokens, p_output_tokens,
                                                 p_cache_write_tokens, p_cache_read_tokens);
        IF v_usage.id IS NOT NULL THEN
            UPDATE keen.agent_sessions s
               SET claude_cost_usd = s.claude_cost_usd - v_cost,
                   keen_cost_credits = s.keen_cost_credits
                                       - CASE WHEN a.unlimited_credits THEN 0 ELSE v_charge END
              FROM keen.credit_accounts a
             WHERE s.id = p_session_id AND a.user_id = s.user_id;
            RETURN QUERY SELECT * FROM keen_private.llm_usage_result(v_usage);
            RETURN;
        END IF;
    END IF;

    IF v_charge > 0 THEN
        v_row := keen_private.credit_charge(v_user, v_cost, v_multiplier, v_charge, p_session_id,
                                            'LLM usage: ' || p_model, NULL, NULL,
                                            pg_catalog.jsonb_build_object('model', p_model, 'request_id', p_request_id));
    END IF;
    INSERT INTO keen.llm_usage AS u
           (user_id, session_id, model, price_id, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
            claude_cost_usd, markup_multiplier, charged_credits, transaction_id, request_id, latency_ms)
    VALUES (v_user, p_session_id, p_model, v_price.id, p_input_tokens, p_output_tokens, p_cache_write_tokens,
            p_cache_read_tokens, v_cost, v_multiplier,
            CASE WHEN v_row.id IS NULL OR v_row.is_admin_bypass THEN 0 ELSE -v_row.amount END,
            v_row.id, p_request_id, p_latency_ms)
    RETURNING u.* INTO v_usage;
    RETURN QUERY SELECT v_usage.id, v_usage.claude_cost_usd, v_usage.charged_credits, v_usage.transaction_id,
                        v_row.balance_after::numeric;
END
$$;
REVOKE ALL ON FUNCTION keen.record_llm_usage(uuid, text, bigint, bigint, bigint, bigint, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_llm_usage(uuid, text, bigint, bigint, bigint, bigint, text, integer) TO keen_app;
COMMENT ON FUNCTION keen.record_llm_usage(uuid, text, bigint, bigint, bigint, bigint, text, integer) IS
    'Prices one LLM call exactly and charges it at once, a stopped session too (idempotent by request id per session); 22023, 28000, 42501, P0002, KN001, KN002, KN005, 25000.';

-- keen.usage_by_model: p_user_id's LLM calls over the UTC days p_from..p_to (inclusive), per
-- model: calls, tokens of each kind, the exact USD cost and the credits charged. Read from the
-- usage rows themselves (one index range of the user's), so today counts before any rollup.
-- Who: the user's own, or any for an admin. Raises 22023 (NULL user, a NULL, reversed or
-- over-long range), 42501 (another user's, for a non-admin; 42501 for an API key whose scopes do not cover it:
-- credits:read).
CREATE OR REPLACE FUNCTION keen.usage_by_model(p_user_id uuid, p_from date, p_to date)
RETURNS TABLE (model text, calls bigint, input_tokens bigint, output_tokens bigint, cache_write_tokens bigint,
               cache_read_tokens bigint, claude_cost_usd numeric, credits numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    PERFORM keen_private.analytics_check_range(p_from, p_to);
    PERFORM keen_private.credit_authorize(p_user_id);
    RETURN QUERY
    SELECT u.model, pg_catalog.count(*), pg_catalog.sum(u.input_tokens)::bigint, pg_catalog.sum(u.output_tokens)::bigint,
           pg_catalog.sum(u.cache_write_tokens)::bigint, pg_catalog.sum(u.cache_read_tokens)::bigint,
           pg_catalog.sum(u.claude_cost_usd), pg_catalog.sum(u.charged_credits)
      FROM keen.llm_usage u
     WHERE u.user_id = p_user_id
       AND u.created_at >= keen_private.accounting_day_start(p_from)
       AND u.created_at < keen_private.accounting_day_start(p_to + 1)
     GROUP BY u.model
     ORDER BY u.model;
END
$$;
REVOKE ALL ON FUNCTION keen.usage_by_model(uuid, date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.usage_by_model(uuid, date, date) TO keen_app;
COMMENT ON FUNCTION keen.usage_by_model(uuid, date, date) IS
    'A user''s LLM calls per model over UTC days (calls, tokens, exact cost, credits); own or admin; 22023, 42501.';

-- ---------------------------------------------------------------------------------------------
-- Ownership (issue 17): the ledger functions that authorize explicitly run as keen_ledger
-- (BYPASSRLS, privileges on the ledger tables only; db/schema/0015), so the row policies are not
-- re-run, with their actor checks, in every statement of a charge. Each of them checks the actor
-- once (credit_authorize, or the hold's owner) before it touches an account; docs/credits.md
-- argues it. The rest (purchases and refunds, which audit; the recharge queue, which relies on
-- the policies for who sees what) stays keen_owner's. Metering is keen_ledger's too: it checks
-- the actor once against the session's owner (record_llm_usage).
-- ---------------------------------------------------------------------------------------------
DO $ledger$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'keen.deduct_credits(uuid, numeric, uuid, text, text)',
        'keen.reserve_credits(uuid, numeric, uuid, interval, text)',
        'keen.capture_reservation(uuid, numeric, text)',
        'keen.release_reservation(uuid)',
        'keen.get_balance(uuid)',
        'keen.validate_credits(uuid, numeric)',
        'keen.credit_history(uuid, integer)',
        'keen.set_spending_limits(uuid, numeric, numeric)',
        'keen.set_auto_recharge(uuid, boolean, numeric, numeric)',
        'keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)',
        'keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)',
        'keen_private.credit_replay(uuid, text, text, numeric, uuid)',
        'keen_private.credit_live_holds(uuid, uuid)',
        'keen_private.credit_check_spend(keen.credit_accounts, numeric, uuid)',
        'keen_private.credit_request_recharge(keen.credit_transactions)',
        'keen_private.credit_refresh_holds(uuid)',
        'keen_private.credit_lock(uuid)',
        'keen_private.credit_hold_replay(uuid, text, numeric, uuid)',
        'keen_private.credit_hold_result(keen.credit_reservations)',
        'keen.record_llm_usage(uuid, text, bigint, bigint, bigint, bigint, text, integer)',
        'keen_private.llm_usage_replay(uuid, text, text, bigint, bigint, bigint, bigint)',
        'keen_private.llm_usage_result(keen.llm_usage)']
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO keen_ledger', v_fn);
    END LOOP;
END
$ledger$;
-- What keen_ledger's functions call, and what keen_owner's functions call of keen_ledger's.
GRANT EXECUTE ON FUNCTION keen.actor_id(), keen.actor_is_admin(), keen.session_is_maintenance(),
                          keen.setting_numeric(text),
                          keen_private.require_read_committed(), keen_private.require_scope(text),
                          keen_private.require_all_tenants(text),
                          keen_private.require_size(text, text), keen_private.size_cap(text),
                          keen_private.credit_authorize(uuid), keen_private.credit_check_amount(text, numeric, numeric),
                          keen_private.credit_check_text(text, text), keen_private.credit_check_cost(text, numeric),
                          keen_private.markup_rate(uuid), keen_private.usage_charge(numeric, numeric),
                          keen_private.accounting_day(timestamptz), keen_private.accounting_month(timestamptz),
                          keen_private.period_total(date, numeric, date),
                          keen_private.credit_cost_ok(numeric), keen_private.credit_description_ok(text),
                          keen_private.credit_key_ok(text), keen_private.actor_acts_for(uuid),
                          keen_private.require_actor(), keen_private.credit_check_session(uuid, uuid)
    TO keen_ledger;
-- (credit_charge itself is not keen_owner's to call: it runs as its caller; credit_charge_as_ledger
-- runs it as keen_ledger.)
REVOKE EXECUTE ON FUNCTION keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)
    FROM keen_owner;
GRANT EXECUTE ON FUNCTION keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb),
                          keen_private.credit_replay(uuid, text, text, numeric, uuid),
                          keen_private.credit_live_holds(uuid, uuid), keen_private.credit_lock(uuid)
    TO keen_owner;
