-- 0021: metering runs as keen_ledger.
--   keen.record_llm_usage (db/functions/credits.sql) authorizes explicitly (the actor against the
--   session's owner, once) and charges through the ledger's one locked path; owned by
--   keen_ledger (BYPASSRLS, 0015) it no longer re-runs the row policies of sessions, accounts and
--   usage rows in each of its statements. keen_ledger needs to read the prices, to read and
--   append usage rows, and to add a call's cost to its session (those three columns only).
SET lock_timeout = '5s';
SET statement_timeout = '60s';

GRANT SELECT ON keen.model_prices TO keen_ledger;
GRANT SELECT, INSERT ON keen.llm_usage TO keen_ledger;
GRANT UPDATE (claude_cost_usd, keen_cost_credits, last_activity_at) ON keen.agent_sessions TO keen_ledger;
