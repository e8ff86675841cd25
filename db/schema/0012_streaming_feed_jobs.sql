-- 0012: the live stream completed (issue 13).
--   * keen.websocket_connections.last_delivered_event_id: the server-side cursor of a
--     connection (keen.next_events moves it in the caller's transaction: at-least-once).
--   * keen.system_metrics: reference 004's platform snapshot (keen.snapshot_system_metrics),
--     kept 90 days.
--   * keen.maintenance_jobs: one row per scheduled upkeep job (db/functions/streaming.sql):
--     when it was scheduled and when it last succeeded, whoever ran it (pg_cron or
--     `keen-db jobs`), so the doctor can tell a job that has not run when due.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

-- A constant default: no table rewrite, the lock is held for a catalog update only.
ALTER TABLE keen.websocket_connections
    ADD COLUMN IF NOT EXISTS last_delivered_event_id bigint NOT NULL DEFAULT 0;

SET ROLE keen_owner;

CREATE TABLE IF NOT EXISTS keen.system_metrics (
    id                            uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    metric_timestamp              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    active_users                  bigint NOT NULL,
    active_sessions               bigint NOT NULL,
    active_websocket_connections  bigint NOT NULL,
    sessions_in_explore           bigint NOT NULL DEFAULT 0,
    sessions_in_plan              bigint NOT NULL DEFAULT 0,
    sessions_in_found             bigint NOT NULL DEFAULT 0,
    sessions_in_summon            bigint NOT NULL DEFAULT 0,
    sessions_in_complete          bigint NOT NULL DEFAULT 0,
    avg_response_time_ms          numeric(10,2),
    error_rate                    numeric(5,4),
    database_connections          bigint,
    credits_purchased_today       numeric(20,6) NOT NULL DEFAULT 0,
    credits_consumed_today        numeric(20,6) NOT NULL DEFAULT 0,
    created_at                    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX IF NOT EXISTS system_metrics_timestamp_idx ON keen.system_metrics (metric_timestamp);

CREATE TABLE IF NOT EXISTS keen.maintenance_jobs (
    job_name          text PRIMARY KEY,
    scheduled_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_started_at   timestamptz,
    last_succeeded_at timestamptz,
    last_duration_ms  bigint,
    last_result       text,
    runs              bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);

RESET ROLE;

ALTER TABLE keen.system_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.system_metrics FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.maintenance_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.maintenance_jobs FORCE ROW LEVEL SECURITY;

REVOKE ALL ON keen.system_metrics, keen.maintenance_jobs FROM PUBLIC;
GRANT SELECT ON keen.system_metrics, keen.maintenance_jobs TO keen_app, keen_maintenance;
