-- Undoes 0007. The repeatable analytics functions that read what 0007 added go first (the
-- next `keen-db migrate` re-creates them from db/functions/analytics.sql).
DROP FUNCTION IF EXISTS keen.dashboard_metrics();
DROP FUNCTION IF EXISTS keen.refresh_dashboard_metrics();
DROP FUNCTION IF EXISTS keen.platform_metrics(date, date);
DROP FUNCTION IF EXISTS keen.rollup_daily_analytics(date);
DROP MATERIALIZED VIEW IF EXISTS keen.admin_dashboard_metrics;
ALTER TABLE keen.daily_analytics
    DROP COLUMN IF EXISTS ended_sessions,
    DROP COLUMN IF EXISTS total_session_time_seconds,
    DROP COLUMN IF EXISTS recursion_depth_sum,
    DROP COLUMN IF EXISTS total_credits_refunded;
