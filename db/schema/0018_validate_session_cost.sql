-- 0018: validates 0011's session cost CHECK (agent_sessions_claude_cost_usd_check, claude_cost_usd
-- >= 0), added NOT VALID there. In a migration, and so a transaction, of its own: VALIDATE
-- CONSTRAINT scans the whole of agent_sessions under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes go on; made inside 0015, the scan ran while that transaction held ACCESS EXCLUSIVE on the
-- ledger tables, and every charge waited for it. Nothing else is locked here: lock_timeout bounds
-- the wait for the lock (behind a DDL statement or a VACUUM), statement_timeout the scan.
SET lock_timeout = '5s';
SET statement_timeout = '30min';

ALTER TABLE keen.agent_sessions VALIDATE CONSTRAINT agent_sessions_claude_cost_usd_check;
