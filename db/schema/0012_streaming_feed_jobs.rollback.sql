-- Rollback of 0012 (the repeatable files are dropped first by keen-db rollback).
SET lock_timeout = '5s';
SET statement_timeout = '60s';
DROP TABLE IF EXISTS keen.maintenance_jobs;
DROP TABLE IF EXISTS keen.system_metrics;
ALTER TABLE keen.websocket_connections DROP COLUMN IF EXISTS last_delivered_event_id;
