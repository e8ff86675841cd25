-- 0007: what the analytics area adds to the schema.
--   * keen.daily_analytics gets the exact sums behind its averages (ended sessions, their total
--     time, the sum of recursion depths) and the day's refunds, so that platform_metrics can
--     combine any range of days from the rollups alone, without rounding drift and without
--     touching the raw tables.
--   * keen.admin_dashboard_metrics: the last 24 hours of agent sessions by UTC hour
--     (reference 002), refreshed concurrently by keen.refresh_dashboard_metrics().
--     A materialized view has no row-level security, so nobody but its owner may read it:
--     admins read it through keen.dashboard_metrics().

ALTER TABLE keen.daily_analytics
    ADD COLUMN ended_sessions              integer NOT NULL DEFAULT 0 CHECK (ended_sessions >= 0),
    ADD COLUMN total_session_time_seconds  bigint NOT NULL DEFAULT 0 CHECK (total_session_time_seconds >= 0),
    ADD COLUMN recursion_depth_sum         bigint NOT NULL DEFAULT 0 CHECK (recursion_depth_sum >= 0),
    ADD COLUMN total_credits_refunded      keen.credit_amount NOT NULL DEFAULT 0;

COMMENT ON COLUMN keen.daily_analytics.ended_sessions IS 'sessions whose end_time falls on the day (completed, failed or cancelled)';
COMMENT ON COLUMN keen.daily_analytics.total_session_time_seconds IS 'sum of end_time - start_time over the sessions that ended on the day';
COMMENT ON COLUMN keen.daily_analytics.recursion_depth_sum IS 'sum of session_depth over the sessions started on the day';
COMMENT ON COLUMN keen.daily_analytics.total_credits_refunded IS 'credits given back by refund transactions on the day';
COMMENT ON COLUMN keen.daily_analytics.total_credit_revenue IS 'usage charges on the day minus refunds (purchases are not revenue)';

SET ROLE keen_owner;

-- One row per UTC hour of the last 24 (empty hours included, so the unique index always has
-- 24 keys). Built by its owner under the tenant policies: only a refresh by an admin actor or
-- the maintenance role sees every tenant.
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

-- REFRESH ... CONCURRENTLY needs a unique index on plain columns.
CREATE UNIQUE INDEX admin_dashboard_metrics_hour_key ON keen.admin_dashboard_metrics (hour_bucket);

RESET ROLE;

REVOKE ALL ON keen.admin_dashboard_metrics FROM PUBLIC;
COMMENT ON MATERIALIZED VIEW keen.admin_dashboard_metrics IS
    'Agent sessions of the last 24 UTC hours by hour; no RLS, so no grants: admins read keen.dashboard_metrics().';
