-- Undoes 0018: the session cost CHECK goes back to NOT VALID, as 0011 left it (the same rule,
-- checked on new rows only). Dropping and adding a NOT VALID constraint is a catalog change
-- under a short ACCESS EXCLUSIVE lock: nothing is scanned.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.agent_sessions DROP CONSTRAINT IF EXISTS agent_sessions_claude_cost_usd_check;
ALTER TABLE keen.agent_sessions
    ADD CONSTRAINT agent_sessions_claude_cost_usd_check CHECK (claude_cost_usd >= 0) NOT VALID;
