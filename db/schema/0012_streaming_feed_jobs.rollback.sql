-- Rollback of 0012. The repeatable functions that read what 0012 added go first (the next
-- `keen-db migrate` re-creates them from db/functions).
SET lock_timeout = '5s';
SET statement_timeout = '60s';
DROP FUNCTION IF EXISTS keen.snapshot_system_metrics();
DROP FUNCTION IF EXISTS keen.prune_streaming_history(interval, interval);
DROP FUNCTION IF EXISTS keen.maintenance_job_status(interval);
DROP FUNCTION IF EXISTS keen.register_maintenance_jobs();
DROP FUNCTION IF EXISTS keen.run_maintenance_job(text);
DROP FUNCTION IF EXISTS keen.maintenance_job_catalog();
DROP FUNCTION IF EXISTS keen.next_events(text, integer);
DROP TABLE IF EXISTS keen.maintenance_jobs;
DROP TABLE IF EXISTS keen.system_metrics;
ALTER TABLE keen.websocket_connections DROP COLUMN IF EXISTS last_delivered_event_id;
