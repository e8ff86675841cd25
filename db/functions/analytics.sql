-- analytics.sql: the daily rollups, the platform metrics read from them, a user's own usage,
-- and the last-24-hours dashboard (a materialized view, see db/schema/0007).
--
-- Days are UTC days: day D is the range [D 00:00 UTC, D+1 00:00 UTC). Every range below is
-- built with keen_private.accounting_day_start and today is keen_private.accounting_day (both
-- in credits.sql, the ledger's accounting day), never by casting a timestamp to date, so the
-- session's TimeZone setting changes nothing. Definitions (docs/analytics.md explains them):
--   active user     a user with any row on the day: a session started or ended, a phase
--                   transition, a tool execution, a git operation or a credit transaction
--   credits used    usage charges (minus the negative amounts of `usage` rows)
--   credit revenue  usage charges minus refunds of usage; purchases are not revenue
--   purchased       purchases minus refunds of purchases (refund rows with a negative amount)
--   claude cost     claude_cost_usd of `usage` and `admin_bypass` rows
--   sessions        started ones count on their start day; outcomes, durations, tokens and
--                   files count on the day the session ended
--   per model       keen.llm_usage rows of the day (keen.daily_model_usage): calls, users,
--                   tokens, the exact USD cost and the credits charged

-- keen_private.analytics_check_range: validates a reporting range of dates.
-- Who: the analytics functions (owner only).
-- Raises 22023 when a bound is NULL, the range is reversed, or it spans more than ten years.
CREATE OR REPLACE FUNCTION keen_private.analytics_check_range(p_from date, p_to date)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, keen, pg_temp
AS $$
BEGIN
    IF p_from IS NULL OR p_to IS NULL THEN
        RAISE EXCEPTION 'a date range needs both p_from and p_to' USING ERRCODE = '22023';
    END IF;
    IF p_from > p_to THEN
        RAISE EXCEPTION 'p_from (%) is after p_to (%)', p_from, p_to USING ERRCODE = '22023';
    END IF;
    -- Ten years of days: anything longer is a typo, not a report.
    IF p_to - p_from > 3660 THEN
        RAISE EXCEPTION 'a range of % days is too long (at most 3661)', p_to - p_from + 1
            USING ERRCODE = '22023';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen_private.analytics_check_range(date, date) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.analytics_check_range(date, date) IS 'Validates a report range; 22023 for NULL, reversed or longer than ten years.';

-- keen.rollup_daily_analytics: computes keen.daily_usage_stats (one row per user active on
-- the UTC day p_day) and the one keen.daily_analytics row of the day from the raw tables.
-- Idempotent: rows are upserted and only rewritten when a figure changed (so a second run
-- leaves them byte for byte, updated_at included); per-user rows of the day for users no
-- longer active are deleted. Concurrent rollups of one day serialize on an advisory lock.
-- An omitted (or NULL) day is today's accounting day, keen_private.accounting_day(now()): UTC,
-- not current_date, which follows the session time zone. (The default is NULL rather than that
-- expression because a default is evaluated with the caller's privileges, and keen_app may not
-- execute keen_private's functions.)
-- The per-model rollup of the day (keen.daily_model_usage) is upserted the same way.
-- Who: an admin actor or the maintenance role (42501 otherwise; an admin's API key with a scope
-- list too, keen_private.require_all_tenants).
-- Raises 22023 for a day after today (UTC).
CREATE OR REPLACE FUNCTION keen.rollup_daily_analytics(p_day date DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_today date := keen_private.accounting_day(pg_catalog.now());
    v_start timestamptz;
    v_end timestamptz;
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may run the rollup');
    p_day := COALESCE(p_day, v_today);
    IF p_day > v_today THEN
        RAISE EXCEPTION 'cannot roll up %: it is after today (UTC)', p_day USING ERRCODE = '22023';
    END IF;
    v_start := keen_private.accounting_day_start(p_day);
    v_end := keen_private.accounting_day_start(p_day + 1);

    -- One rollup of a day at a time: two concurrent runs would otherwise race on the delete.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('keen.rollup_daily_analytics'),
                                             p_day - DATE '2000-01-01');

    -- One statement. Each CTE reads one raw table over the day's range (each indexed on its
    -- time column) and groups it twice: by user (user_id set) and for the whole platform
    -- (the grand-total row of GROUPING SETS, user_id NULL; a real user_id is never NULL).
    -- Sums stay exact here and are rounded where they are stored.
    WITH started AS (
        SELECT s.user_id,
               pg_catalog.count(*) AS sessions,
               pg_catalog.count(*) FILTER (WHERE s.session_depth > 0) AS agents_spawned,
               pg_catalog.max(s.session_depth) AS max_depth,
               COALESCE(pg_catalog.sum(s.session_depth), 0) AS depth_sum,
               pg_catalog.count(*) FILTER (WHERE s.is_admin_session) AS admin_sessions
          FROM keen.agent_sessions s
         WHERE s.start_time >= v_start AND s.start_time < v_end
         GROUP BY GROUPING SETS ((s.user_id), ())
    ), ended AS (
        SELECT s.user_id,
               pg_catalog.count(*) AS sessions,
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'completed') AS completed,
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'failed') AS failed,
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'cancelled') AS cancelled,
               COALESCE(pg_catalog.sum(GREATEST(EXTRACT(EPOCH FROM s.end_time - s.start_time), 0)), 0) AS seconds,
               COALESCE(pg_catalog.sum(s.tokens_used), 0) AS tokens,
               COALESCE(pg_catalog.sum(s.context_tokens_used), 0) AS context_tokens,
               COALESCE(pg_catalog.sum(pg_catalog.cardinality(s.files_modified)), 0) AS files_modified,
               COALESCE(pg_catalog.sum(pg_catalog.cardinality(s.files_created)), 0) AS files_created
          FROM keen.agent_sessions s
         WHERE s.end_time >= v_start AND s.end_time < v_end
         GROUP BY GROUPING SETS ((s.user_id), ())
    ), phases AS (
        -- duration_ms is the time spent in from_phase, recorded when the phase was left.
        SELECT p.user_id,
               COALESCE(pg_catalog.sum(p.duration_ms) FILTER (WHERE p.from_phase = 'EXPLORE'), 0) AS explore_ms,
               COALESCE(pg_catalog.sum(p.duration_ms) FILTER (WHERE p.from_phase = 'PLAN'), 0) AS plan_ms,
               COALESCE(pg_catalog.sum(p.duration_ms) FILTER (WHERE p.from_phase = 'FOUND'), 0) AS found_ms,
               COALESCE(pg_catalog.sum(p.duration_ms) FILTER (WHERE p.from_phase = 'SUMMON'), 0) AS summon_ms,
               COALESCE(pg_catalog.sum(p.duration_ms) FILTER (WHERE p.from_phase = 'COMPLETE'), 0) AS complete_ms
          FROM keen.phase_transitions p
         WHERE p.transition_timestamp >= v_start AND p.transition_timestamp < v_end
         GROUP BY GROUPING SETS ((p.user_id), ())
    ), tools AS (
        SELECT t.user_id,
               pg_catalog.count(*) AS executions,
               pg_catalog.array_agg(DISTINCT t.tool_name::text ORDER BY t.tool_name::text) AS tools_used
          FROM keen.tool_executions t
         WHERE t.execution_timestamp >= v_start AND t.execution_timestamp < v_end
         GROUP BY t.user_id
    ), gits AS (
        SELECT g.user_id, pg_catalog.count(*) AS operations
          FROM keen.git_operations g
         WHERE g.operation_timestamp >= v_start AND g.operation_timestamp < v_end
         GROUP BY g.user_id
    ), ledger AS (
        SELECT c.user_id,
               -- A refund of a purchase takes credits back (amount < 0): it nets the purchase out.
               -- A refund of usage gives credits back (amount > 0): it lowers the revenue.
               COALESCE(pg_catalog.sum(c.amount) FILTER (WHERE c.transaction_type = 'purchase'
                                                            OR (c.transaction_type = 'refund' AND c.amount < 0)), 0) AS purchased,
               COALESCE(-pg_catalog.sum(c.amount) FILTER (WHERE c.transaction_type = 'usage'), 0) AS used,
               COALESCE(pg_catalog.sum(c.amount) FILTER (WHERE c.transaction_type = 'refund' AND c.amount > 0), 0) AS refunded,
               -- What the bypass waived, at list price: added to the charges it is the day's work in credits.
               COALESCE(pg_catalog.sum(keen_private.usage_charge(c.claude_cost_usd, c.markup_multiplier))
                          FILTER (WHERE c.transaction_type = 'admin_bypass'), 0) AS waived,
               COALESCE(pg_catalog.sum(c.claude_cost_usd) FILTER (WHERE c.transaction_type IN ('usage', 'admin_bypass')), 0) AS claude_cost,
               pg_catalog.count(*) FILTER (WHERE c.transaction_type = 'admin_bypass' OR c.is_admin_bypass) AS bypasses
          FROM keen.credit_transactions c
         WHERE c.created_at >= v_start AND c.created_at < v_end
         GROUP BY GROUPING SETS ((c.user_id), ())
    ), active AS (
        SELECT user_id FROM started WHERE user_id IS NOT NULL
        UNION SELECT user_id FROM ended WHERE user_id IS NOT NULL
        UNION SELECT user_id FROM phases WHERE user_id IS NOT NULL
        UNION SELECT user_id FROM tools
        UNION SELECT user_id FROM gits
        UNION SELECT user_id FROM ledger WHERE user_id IS NOT NULL
    ), per_user AS (
        INSERT INTO keen.daily_usage_stats AS d (
            user_id, date_bucket, sessions_started, sessions_completed, sessions_failed,
            sessions_cancelled, total_session_time_seconds, explore_phase_time_seconds,
            plan_phase_time_seconds, found_phase_time_seconds, summon_phase_time_seconds,
            complete_phase_time_seconds, agents_spawned, max_recursion_depth, tool_executions,
            unique_tools_used, total_tokens_consumed, total_cost, total_claude_cost_usd,
            credits_purchased, credits_used, admin_bypass_transactions, files_modified,
            files_created, git_operations)
        SELECT a.user_id, p_day,
               COALESCE(st.sessions, 0), COALESCE(en.completed, 0), COALESCE(en.failed, 0),
               COALESCE(en.cancelled, 0), pg_catalog.round(COALESCE(en.seconds, 0))::bigint,
               pg_catalog.round(COALESCE(ph.explore_ms, 0) / 1000.0)::bigint,
               pg_catalog.round(COALESCE(ph.plan_ms, 0) / 1000.0)::bigint,
               pg_catalog.round(COALESCE(ph.found_ms, 0) / 1000.0)::bigint,
               pg_catalog.round(COALESCE(ph.summon_ms, 0) / 1000.0)::bigint,
               pg_catalog.round(COALESCE(ph.complete_ms, 0) / 1000.0)::bigint,
               COALESCE(st.agents_spawned, 0), COALESCE(st.max_depth, 0),
               COALESCE(tl.executions, 0), COALESCE(tl.tools_used, '{}'),
               COALESCE(en.tokens, 0), COALESCE(lg.used + lg.waived, 0), COALESCE(lg.claude_cost, 0),
               COALESCE(lg.purchased, 0), COALESCE(lg.used, 0), COALESCE(lg.bypasses, 0),
               COALESCE(en.files_modified, 0), COALESCE(en.files_created, 0),
               COALESCE(gt.operations, 0)
          FROM active a
          LEFT JOIN started st ON st.user_id = a.user_id
          LEFT JOIN ended en ON en.user_id = a.user_id
          LEFT JOIN phases ph ON ph.user_id = a.user_id
          LEFT JOIN tools tl ON tl.user_id = a.user_id
          LEFT JOIN gits gt ON gt.user_id = a.user_id
          LEFT JOIN ledger lg ON lg.user_id = a.user_id
        ON CONFLICT (user_id, date_bucket) DO UPDATE
           SET sessions_started = EXCLUDED.sessions_started,
               sessions_completed = EXCLUDED.sessions_completed,
               sessions_failed = EXCLUDED.sessions_failed,
               sessions_cancelled = EXCLUDED.sessions_cancelled,
               total_session_time_seconds = EXCLUDED.total_session_time_seconds,
               explore_phase_time_seconds = EXCLUDED.explore_phase_time_seconds,
               plan_phase_time_seconds = EXCLUDED.plan_phase_time_seconds,
               found_phase_time_seconds = EXCLUDED.found_phase_time_seconds,
               summon_phase_time_seconds = EXCLUDED.summon_phase_time_seconds,
               complete_phase_time_seconds = EXCLUDED.complete_phase_time_seconds,
               agents_spawned = EXCLUDED.agents_spawned,
               max_recursion_depth = EXCLUDED.max_recursion_depth,
               tool_executions = EXCLUDED.tool_executions,
               unique_tools_used = EXCLUDED.unique_tools_used,
               total_tokens_consumed = EXCLUDED.total_tokens_consumed,
               total_cost = EXCLUDED.total_cost,
               total_claude_cost_usd = EXCLUDED.total_claude_cost_usd,
               credits_purchased = EXCLUDED.credits_purchased,
               credits_used = EXCLUDED.credits_used,
               admin_bypass_transactions = EXCLUDED.admin_bypass_transactions,
               files_modified = EXCLUDED.files_modified,
               files_created = EXCLUDED.files_created,
               git_operations = EXCLUDED.git_operations,
               updated_at = pg_catalog.now()
         -- Rewrite only what changed: a repeated run leaves the row as it was, updated_at included.
         WHERE pg_catalog.to_jsonb(d) - ARRAY['id', 'created_at', 'updated_at']
               IS DISTINCT FROM pg_catalog.to_jsonb(EXCLUDED) - ARRAY['id', 'created_at', 'updated_at']
        RETURNING d.user_id
    ), platform AS (
        INSERT INTO keen.daily_analytics AS d (
            date_bucket, total_users, active_users, new_users, total_sessions, successful_sessions,
            failed_sessions, cancelled_sessions, ended_sessions, total_session_time_seconds,
            avg_session_duration_minutes, total_claude_costs_usd, total_credit_revenue,
            total_credits_purchased, total_credits_used, total_credits_refunded,
            total_tokens_consumed, context_tokens_used, total_agents_spawned, recursion_depth_sum,
            avg_recursion_depth, max_recursion_depth, admin_sessions, admin_bypass_transactions,
            explore_phase_time_seconds, plan_phase_time_seconds, found_phase_time_seconds,
            summon_phase_time_seconds, complete_phase_time_seconds)
        SELECT p_day, us.total_users, (SELECT pg_catalog.count(*) FROM active), us.new_users,
               st.sessions, en.completed, en.failed, en.cancelled, en.sessions,
               pg_catalog.round(en.seconds)::bigint,
               CASE WHEN en.sessions > 0 THEN pg_catalog.round(en.seconds / en.sessions / 60, 2) END,
               lg.claude_cost, lg.used - lg.refunded, lg.purchased, lg.used, lg.refunded,
               en.tokens, en.context_tokens, st.agents_spawned, st.depth_sum,
               CASE WHEN st.sessions > 0 THEN pg_catalog.round(st.depth_sum::numeric / st.sessions, 2) END,
               st.max_depth, st.admin_sessions, lg.bypasses,
               pg_catalog.round(ph.explore_ms / 1000.0)::bigint, pg_catalog.round(ph.plan_ms / 1000.0)::bigint,
               pg_catalog.round(ph.found_ms / 1000.0)::bigint, pg_catalog.round(ph.summon_ms / 1000.0)::bigint,
               pg_catalog.round(ph.complete_ms / 1000.0)::bigint
          FROM (SELECT pg_catalog.count(*) FILTER (WHERE u.created_at < v_end) AS total_users,
                       pg_catalog.count(*) FILTER (WHERE u.created_at >= v_start AND u.created_at < v_end) AS new_users
                  FROM keen.users u) us,
               (SELECT * FROM started WHERE user_id IS NULL) st,
               (SELECT * FROM ended WHERE user_id IS NULL) en,
               (SELECT * FROM phases WHERE user_id IS NULL) ph,
               (SELECT * FROM ledger WHERE user_id IS NULL) lg
        ON CONFLICT (date_bucket) DO UPDATE
           SET total_users = EXCLUDED.total_users,
               active_users = EXCLUDED.active_users,
               new_users = EXCLUDED.new_users,
               total_sessions = EXCLUDED.total_sessions,
               successful_sessions = EXCLUDED.successful_sessions,
               failed_sessions = EXCLUDED.failed_sessions,
               cancelled_sessions = EXCLUDED.cancelled_sessions,
               ended_sessions = EXCLUDED.ended_sessions,
               total_session_time_seconds = EXCLUDED.total_session_time_seconds,
               avg_session_duration_minutes = EXCLUDED.avg_session_duration_minutes,
               total_claude_costs_usd = EXCLUDED.total_claude_costs_usd,
               total_credit_revenue = EXCLUDED.total_credit_revenue,
               total_credits_purchased = EXCLUDED.total_credits_purchased,
               total_credits_used = EXCLUDED.total_credits_used,
               total_credits_refunded = EXCLUDED.total_credits_refunded,
               total_tokens_consumed = EXCLUDED.total_tokens_consumed,
               context_tokens_used = EXCLUDED.context_tokens_used,
               total_agents_spawned = EXCLUDED.total_agents_spawned,
               recursion_depth_sum = EXCLUDED.recursion_depth_sum,
               avg_recursion_depth = EXCLUDED.avg_recursion_depth,
               max_recursion_depth = EXCLUDED.max_recursion_depth,
               admin_sessions = EXCLUDED.admin_sessions,
               admin_bypass_transactions = EXCLUDED.admin_bypass_transactions,
               explore_phase_time_seconds = EXCLUDED.explore_phase_time_seconds,
               plan_phase_time_seconds = EXCLUDED.plan_phase_time_seconds,
               found_phase_time_seconds = EXCLUDED.found_phase_time_seconds,
               summon_phase_time_seconds = EXCLUDED.summon_phase_time_seconds,
               complete_phase_time_seconds = EXCLUDED.complete_phase_time_seconds,
               updated_at = pg_catalog.now()
         WHERE pg_catalog.to_jsonb(d) - ARRAY['id', 'created_at', 'updated_at']
               IS DISTINCT FROM pg_catalog.to_jsonb(EXCLUDED) - ARRAY['id', 'created_at', 'updated_at']
        RETURNING d.date_bucket
    )
    -- A user's row for the day that the raw rows no longer support goes away.
    DELETE FROM keen.daily_usage_stats d
     WHERE d.date_bucket = p_day
       AND NOT EXISTS (SELECT 1 FROM active a WHERE a.user_id = d.user_id);

    -- Per model: the day's LLM calls (BRIN range of keen.llm_usage), rewritten only when changed.
    WITH models AS (
        SELECT u.model, pg_catalog.count(*) AS calls, pg_catalog.count(DISTINCT u.user_id) AS users,
               pg_catalog.sum(u.input_tokens) AS input_tokens, pg_catalog.sum(u.output_tokens) AS output_tokens,
               pg_catalog.sum(u.cache_write_tokens) AS cache_write_tokens,
               pg_catalog.sum(u.cache_read_tokens) AS cache_read_tokens,
               pg_catalog.sum(u.claude_cost_usd) AS cost, pg_catalog.sum(u.charged_credits) AS credits
          FROM keen.llm_usage u
         WHERE u.created_at >= v_start AND u.created_at < v_end
         GROUP BY u.model
    ), upserted AS (
        INSERT INTO keen.daily_model_usage AS d (date_bucket, model, calls, users, input_tokens, output_tokens,
                                                 cache_write_tokens, cache_read_tokens, claude_cost_usd, credits)
        SELECT p_day, m.model, m.calls, m.users, m.input_tokens, m.output_tokens, m.cache_write_tokens,
               m.cache_read_tokens, m.cost, m.credits
          FROM models m
        ON CONFLICT (date_bucket, model) DO UPDATE
           SET calls = EXCLUDED.calls, users = EXCLUDED.users, input_tokens = EXCLUDED.input_tokens,
               output_tokens = EXCLUDED.output_tokens, cache_write_tokens = EXCLUDED.cache_write_tokens,
               cache_read_tokens = EXCLUDED.cache_read_tokens, claude_cost_usd = EXCLUDED.claude_cost_usd,
               credits = EXCLUDED.credits, updated_at = pg_catalog.now()
         WHERE (d.calls, d.users, d.input_tokens, d.output_tokens, d.cache_write_tokens, d.cache_read_tokens,
                d.claude_cost_usd, d.credits)
               IS DISTINCT FROM (EXCLUDED.calls, EXCLUDED.users, EXCLUDED.input_tokens, EXCLUDED.output_tokens,
                                 EXCLUDED.cache_write_tokens, EXCLUDED.cache_read_tokens,
                                 EXCLUDED.claude_cost_usd, EXCLUDED.credits)
        RETURNING d.model
    )
    DELETE FROM keen.daily_model_usage d
     WHERE d.date_bucket = p_day
       AND NOT EXISTS (SELECT 1 FROM models m WHERE m.model = d.model);
END
$$;
REVOKE ALL ON FUNCTION keen.rollup_daily_analytics(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.rollup_daily_analytics(date) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.rollup_daily_analytics(date) IS
    'Idempotent rollup of one UTC day into daily_usage_stats and daily_analytics; admin or maintenance (42501); NULL is today (UTC); 22023 for a future day.';

-- keen.platform_metrics: the platform's figures over the UTC days p_from..p_to (inclusive),
-- read from keen.daily_analytics only (one row per day: the cost is flat in the ledger size).
-- Sums are sums over the days; averages are recomputed from the stored exact sums;
-- total_users is the count at the end of the last rolled-up day of the range; active_users
-- is the highest daily count in the range (distinct users over many days would need the
-- per-user rows; see docs/analytics.md); markup_effectiveness is revenue over Claude cost
-- (NULL without cost). days_rolled_up tells how many days of the range had a rollup.
-- by_model: per model, calls, tokens, the exact USD cost and the credits charged.
-- Who: an admin actor only (42501 otherwise).
-- Raises 22023 for a NULL or reversed range or one longer than ten years.
CREATE OR REPLACE FUNCTION keen.platform_metrics(p_from date, p_to date)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    PERFORM keen_private.require_admin();
    PERFORM keen_private.analytics_check_range(p_from, p_to);

    SELECT pg_catalog.jsonb_build_object(
               'from', p_from,
               'to', p_to,
               'days_in_range', p_to - p_from + 1,
               'days_rolled_up', a.days,
               'total_users', COALESCE(l.total_users, 0),
               'active_users', COALESCE(a.peak_active, 0),
               'active_user_days', a.active_user_days,
               'avg_daily_active_users', CASE WHEN a.days > 0 THEN pg_catalog.round(a.active_user_days::numeric / a.days, 2) END,
               'new_users', a.new_users,
               'total_sessions', a.total_sessions,
               'successful_sessions', a.successful,
               'failed_sessions', a.failed,
               'cancelled_sessions', a.cancelled,
               'ended_sessions', a.ended,
               'avg_session_duration_minutes', CASE WHEN a.ended > 0 THEN pg_catalog.round(a.session_seconds::numeric / a.ended / 60, 2) END,
               'total_claude_cost_usd', a.claude_cost,
               'total_credit_revenue', a.revenue,
               'credits_purchased', a.purchased,
               'credits_used', a.used,
               'credits_refunded', a.refunded,
               'markup_effectiveness', CASE WHEN a.claude_cost > 0 THEN pg_catalog.round(a.revenue / a.claude_cost, 6) END,
               'total_tokens', a.tokens,
               'context_tokens', a.context_tokens,
               'agents_spawned', a.agents_spawned,
               'admin_sessions', a.admin_sessions,
               'admin_bypass_transactions', a.bypasses,
               'avg_recursion_depth', CASE WHEN a.total_sessions > 0 THEN pg_catalog.round(a.depth_sum::numeric / a.total_sessions, 2) END,
               'max_recursion_depth', a.max_depth,
               'phase_time_seconds', pg_catalog.jsonb_build_object(
                   'EXPLORE', a.explore_s, 'PLAN', a.plan_s, 'FOUND', a.found_s,
                   'SUMMON', a.summon_s, 'COMPLETE', a.complete_s),
               'by_model', COALESCE(m.by_model, '{}'::jsonb))
      INTO v_result
      FROM (SELECT pg_catalog.count(*) AS days,
                   pg_catalog.max(d.active_users) AS peak_active,
                   COALESCE(pg_catalog.sum(d.active_users), 0) AS active_user_days,
                   COALESCE(pg_catalog.sum(d.new_users), 0) AS new_users,
                   COALESCE(pg_catalog.sum(d.total_sessions), 0) AS total_sessions,
                   COALESCE(pg_catalog.sum(d.successful_sessions), 0) AS successful,
                   COALESCE(pg_catalog.sum(d.failed_sessions), 0) AS failed,
                   COALESCE(pg_catalog.sum(d.cancelled_sessions), 0) AS cancelled,
                   COALESCE(pg_catalog.sum(d.ended_sessions), 0) AS ended,
                   COALESCE(pg_catalog.sum(d.total_session_time_seconds), 0) AS session_seconds,
                   COALESCE(pg_catalog.sum(d.total_claude_costs_usd), 0)::numeric AS claude_cost,
                   COALESCE(pg_catalog.sum(d.total_credit_revenue), 0)::numeric(20,6) AS revenue,
                   COALESCE(pg_catalog.sum(d.total_credits_purchased), 0)::numeric(20,6) AS purchased,
                   COALESCE(pg_catalog.sum(d.total_credits_used), 0)::numeric(20,6) AS used,
                   COALESCE(pg_catalog.sum(d.total_credits_refunded), 0)::numeric(20,6) AS refunded,
                   COALESCE(pg_catalog.sum(d.total_tokens_consumed), 0) AS tokens,
                   COALESCE(pg_catalog.sum(d.context_tokens_used), 0) AS context_tokens,
                   COALESCE(pg_catalog.sum(d.total_agents_spawned), 0) AS agents_spawned,
                   COALESCE(pg_catalog.sum(d.admin_sessions), 0) AS admin_sessions,
                   COALESCE(pg_catalog.sum(d.admin_bypass_transactions), 0) AS bypasses,
                   COALESCE(pg_catalog.sum(d.recursion_depth_sum), 0) AS depth_sum,
                   pg_catalog.max(d.max_recursion_depth) AS max_depth,
                   COALESCE(pg_catalog.sum(d.explore_phase_time_seconds), 0) AS explore_s,
                   COALESCE(pg_catalog.sum(d.plan_phase_time_seconds), 0) AS plan_s,
                   COALESCE(pg_catalog.sum(d.found_phase_time_seconds), 0) AS found_s,
                   COALESCE(pg_catalog.sum(d.summon_phase_time_seconds), 0) AS summon_s,
                   COALESCE(pg_catalog.sum(d.complete_phase_time_seconds), 0) AS complete_s
              FROM keen.daily_analytics d
             WHERE d.date_bucket BETWEEN p_from AND p_to) a
      LEFT JOIN LATERAL (
            SELECT d.total_users
              FROM keen.daily_analytics d
             WHERE d.date_bucket BETWEEN p_from AND p_to
             ORDER BY d.date_bucket DESC
             LIMIT 1) l ON true
      LEFT JOIN LATERAL (
            -- Per model over the range: one row per day and model (keen.daily_model_usage).
            SELECT pg_catalog.jsonb_object_agg(x.model, pg_catalog.jsonb_build_object(
                       'calls', x.calls, 'input_tokens', x.input_tokens, 'output_tokens', x.output_tokens,
                       'cache_write_tokens', x.cache_write_tokens, 'cache_read_tokens', x.cache_read_tokens,
                       'claude_cost_usd', x.cost, 'credits', x.credits)) AS by_model
              FROM (SELECT d.model, pg_catalog.sum(d.calls) AS calls, pg_catalog.sum(d.input_tokens) AS input_tokens,
                           pg_catalog.sum(d.output_tokens) AS output_tokens,
                           pg_catalog.sum(d.cache_write_tokens) AS cache_write_tokens,
                           pg_catalog.sum(d.cache_read_tokens) AS cache_read_tokens,
                           pg_catalog.sum(d.claude_cost_usd) AS cost, pg_catalog.sum(d.credits) AS credits
                      FROM keen.daily_model_usage d
                     WHERE d.date_bucket BETWEEN p_from AND p_to
                     GROUP BY d.model) x) m ON true;
    RETURN v_result;
END
$$;
REVOKE ALL ON FUNCTION keen.platform_metrics(date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.platform_metrics(date, date) TO keen_app;
COMMENT ON FUNCTION keen.platform_metrics(date, date) IS
    'Platform figures over UTC days p_from..p_to from daily_analytics only; admin only (42501); 22023 for a bad range.';

-- keen.user_usage: one user's daily_usage_stats rows for the UTC days p_from..p_to, oldest first.
-- Who: the user itself, an admin actor (any user) or the maintenance role; through an API key
-- with a scope list, only with credits:read: the rows are the account's usage and spend, what
-- usage_by_model (credits:read in CONTRACT.md "Scopes") reports per model.
-- Raises 22023 for a NULL user or a NULL, reversed or over-long range; P0002 when the user
-- does not exist or belongs to another tenant (row-level security hides it: never told apart);
-- 42501 for an API key whose scopes do not cover it.
CREATE OR REPLACE FUNCTION keen.user_usage(p_user_id uuid, p_from date, p_to date)
RETURNS SETOF keen.daily_usage_stats
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope('credits:read');
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'p_user_id must not be NULL' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.analytics_check_range(p_from, p_to);
    IF NOT EXISTS (SELECT 1 FROM keen.users u WHERE u.id = p_user_id) THEN
        RAISE EXCEPTION 'user not found' USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT d.*
          FROM keen.daily_usage_stats d
         WHERE d.user_id = p_user_id AND d.date_bucket BETWEEN p_from AND p_to
         ORDER BY d.date_bucket;
END
$$;
REVOKE ALL ON FUNCTION keen.user_usage(uuid, date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.user_usage(uuid, date, date) TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.user_usage(uuid, date, date) IS
    'A user''s daily usage rows over UTC days p_from..p_to; own or admin; P0002 for another tenant; 22023 bad input; 42501 (scoped key without credits:read).';

-- keen.refresh_dashboard_metrics: recomputes keen.admin_dashboard_metrics (the last 24 UTC
-- hours) with REFRESH MATERIALIZED VIEW CONCURRENTLY, so readers are never blocked, and
-- returns the time of the refresh.
-- Who: an admin actor or the maintenance role (42501 otherwise): the view is built under
-- their row-level security, which lets them see every tenant. Raises: nothing else.
CREATE OR REPLACE FUNCTION keen.refresh_dashboard_metrics()
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_all_tenants('only an admin or the maintenance role may refresh the dashboard');
    REFRESH MATERIALIZED VIEW CONCURRENTLY keen.admin_dashboard_metrics;
    RETURN pg_catalog.now();
END
$$;
REVOKE ALL ON FUNCTION keen.refresh_dashboard_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.refresh_dashboard_metrics() TO keen_app, keen_maintenance;
COMMENT ON FUNCTION keen.refresh_dashboard_metrics() IS
    'REFRESH MATERIALIZED VIEW CONCURRENTLY keen.admin_dashboard_metrics; admin or maintenance (42501).';

-- keen.dashboard_metrics: the rows of keen.admin_dashboard_metrics (24 UTC hours, oldest
-- first) as of its last refresh. The view has no row-level security, so this function is
-- the only way in. cost_by_model: per model, the hour's calls, USD cost and credits.
-- Who: an admin actor only (42501 otherwise). Raises: nothing else.
DROP FUNCTION IF EXISTS keen.dashboard_metrics();  -- 0011 added cost_by_model to its columns
CREATE OR REPLACE FUNCTION keen.dashboard_metrics()
RETURNS TABLE (hour_bucket timestamptz, sessions_started bigint, sessions_completed bigint,
               sessions_failed bigint, admin_sessions bigint, total_tokens bigint,
               total_context_tokens bigint, total_claude_costs numeric, total_credit_cost numeric,
               avg_credit_cost_per_session numeric, avg_recursion_depth numeric,
               max_recursion_depth integer, cost_by_model jsonb, refreshed_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_admin();
    RETURN QUERY
        SELECT m.hour_bucket, m.sessions_started, m.sessions_completed, m.sessions_failed,
               m.admin_sessions, m.total_tokens, m.total_context_tokens, m.total_claude_costs,
               m.total_credit_cost, m.avg_credit_cost_per_session, m.avg_recursion_depth,
               m.max_recursion_depth, m.cost_by_model, m.refreshed_at
          FROM keen.admin_dashboard_metrics m
         ORDER BY m.hour_bucket;
END
$$;
REVOKE ALL ON FUNCTION keen.dashboard_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.dashboard_metrics() TO keen_app;
COMMENT ON FUNCTION keen.dashboard_metrics() IS
    'The last 24 UTC hours of sessions by hour, as of the last refresh; admin only (42501).';
