-- Undoes 0011. The repeatable functions that read what 0011 added go first (the next
-- `keen-db migrate` re-creates them from db/functions). Costs go back to 6 decimal places
-- (rounded: the sub-micro-dollar part of a metered cost is lost).
SET lock_timeout = '5s';
SET statement_timeout = '600s';

DROP FUNCTION IF EXISTS keen.record_llm_usage(uuid, text, bigint, bigint, bigint, bigint, text, integer);
DROP FUNCTION IF EXISTS keen.set_model_price(text, numeric, numeric, numeric, numeric, timestamptz);
DROP FUNCTION IF EXISTS keen.usage_by_model(uuid, date, date);
DROP FUNCTION IF EXISTS keen_private.llm_usage_result(keen.llm_usage);
DROP FUNCTION IF EXISTS keen_private.llm_usage_replay(uuid, text, text, bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS keen.dashboard_metrics();
DROP FUNCTION IF EXISTS keen.refresh_dashboard_metrics();
DROP FUNCTION IF EXISTS keen.platform_metrics(date, date);
DROP FUNCTION IF EXISTS keen.rollup_daily_analytics(date);
DROP MATERIALIZED VIEW IF EXISTS keen.admin_dashboard_metrics;
DROP TABLE IF EXISTS keen.daily_model_usage;
DROP TABLE IF EXISTS keen.llm_usage;
DROP TABLE IF EXISTS keen.model_prices;

ALTER TABLE keen.credit_transactions
    ALTER COLUMN claude_cost_usd TYPE keen.credit_amount USING pg_catalog.round(claude_cost_usd, 6);
ALTER TABLE keen.credit_transactions
    ADD CONSTRAINT credit_transactions_claude_cost_usd_check CHECK (claude_cost_usd >= 0);
ALTER TABLE keen.credit_reservations
    ALTER COLUMN estimated_claude_cost_usd TYPE keen.credit_amount USING pg_catalog.round(estimated_claude_cost_usd, 6);
ALTER TABLE keen.credit_reservations
    ADD CONSTRAINT credit_reservations_estimated_claude_cost_usd_check CHECK (estimated_claude_cost_usd > 0);
ALTER TABLE keen.agent_sessions DROP CONSTRAINT IF EXISTS agent_sessions_claude_cost_usd_check;
ALTER TABLE keen.agent_sessions
    ALTER COLUMN claude_cost_usd TYPE keen.credit_amount USING pg_catalog.round(claude_cost_usd, 6);
ALTER TABLE keen.agent_sessions ADD CONSTRAINT agent_sessions_claude_cost_usd_check CHECK (claude_cost_usd >= 0);
ALTER TABLE keen.daily_usage_stats
    ALTER COLUMN total_claude_cost_usd TYPE keen.credit_amount USING pg_catalog.round(total_claude_cost_usd, 6);
ALTER TABLE keen.daily_analytics
    ALTER COLUMN total_claude_costs_usd TYPE keen.credit_amount USING pg_catalog.round(total_claude_costs_usd, 6);

SET ROLE keen_owner;
CREATE MATERIALIZED VIEW keen.admin_dashboard_metrics AS
SELECT h.hour_bucket,
       pg_catalog.count(s.id)::bigint                                              AS sessions_started,
       pg_catalog.count(s.id) FILTER (WHERE s.execution_status = 'completed')::bigint AS sessions_completed,
       pg_catalog.count(s.id) FILTER (WHERE s.execution_status = 'failed')::bigint    AS sessions_failed,
       pg_catalog.count(s.id) FILTER (WHERE s.is_admin_session)::bigint               AS admin_sessions,
       COALESCE(pg_catalog.sum(s.tokens_used), 0)::bigint                          AS total_tokens,
       COALESCE(pg_catalog.sum(s.context_tokens_used), 0)::bigint                  AS total_context_tokens,
       COALESCE(pg_catalog.sum(s.claude_cost_usd), 0)::numeric(20,6)               AS total_claude_costs,
       COALESCE(pg_catalog.sum(s.keen_cost_credits), 0)::numeric(20,6)             AS total_credit_cost,
       pg_catalog.round(pg_catalog.avg(s.keen_cost_credits), 6)                    AS avg_credit_cost_per_session,
       pg_catalog.round(pg_catalog.avg(s.session_depth), 2)                        AS avg_recursion_depth,
       pg_catalog.max(s.session_depth)                                             AS max_recursion_depth,
       pg_catalog.now()                                                            AS refreshed_at
  FROM pg_catalog.generate_series(pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC') - interval '23 hours',
                                  pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC'),
                                  interval '1 hour') AS h (hour_bucket)
  LEFT JOIN keen.agent_sessions s
         ON s.start_time >= h.hour_bucket AND s.start_time < h.hour_bucket + interval '1 hour'
 GROUP BY h.hour_bucket
WITH DATA;
CREATE UNIQUE INDEX admin_dashboard_metrics_hour_key ON keen.admin_dashboard_metrics (hour_bucket);
RESET ROLE;
REVOKE ALL ON keen.admin_dashboard_metrics FROM PUBLIC;
