REVOKE UPDATE (claude_cost_usd, keen_cost_credits, last_activity_at) ON keen.agent_sessions FROM keen_ledger;
REVOKE SELECT, INSERT ON keen.llm_usage FROM keen_ledger;
REVOKE SELECT ON keen.model_prices FROM keen_ledger;
