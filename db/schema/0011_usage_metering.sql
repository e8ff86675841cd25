-- 0011: usage metering (issue 12, CONTRACT.md "Usage metering").
--   * keen.model_prices: dated prices per million tokens (input, output, cache write, cache
--     read); a change is a new row, so a usage row keeps the price it was charged at (price_id).
--     Seeded with the prices published on 2025-11-24, as data an admin updates.
--   * keen.llm_usage: one row per LLM call a session reported, priced exactly, with the ledger
--     row that charged it; a provider request id is unique per session (retries).
--   * keen.daily_model_usage: the per-model daily rollup beside daily_usage_stats and
--     daily_analytics (platform-wide, one row per UTC day and model).
--   * USD costs keep 12 decimal places: the cost columns become unconstrained numeric (the
--     functions refuse more than 12 decimals). numeric(20,6) -> numeric is binary-coercible,
--     so PostgreSQL changes the catalog only: no table rewrite, no scan, an ACCESS EXCLUSIVE
--     lock for a moment (lock_timeout bounds the wait). The CHECKs on those columns would be
--     re-validated by a full scan under that lock, so they are dropped first; the session's
--     comes back NOT VALID and is validated without blocking writes; the ledger's
--     (credit_transactions, credit_reservations) are kept by the one function that writes
--     each row (issue 17: no CHECK re-planned on the ledger's hot path).
--   * keen.admin_dashboard_metrics depends on agent_sessions.claude_cost_usd: it is rebuilt,
--     with the cost and credits of each model per hour.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

SET ROLE keen_owner;

CREATE TABLE keen.model_prices (
    id                        uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    model                     text NOT NULL CHECK (model ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$'),
    input_usd_per_mtok        numeric NOT NULL CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok       numeric NOT NULL CHECK (output_usd_per_mtok >= 0),
    cache_write_usd_per_mtok  numeric NOT NULL CHECK (cache_write_usd_per_mtok >= 0),
    cache_read_usd_per_mtok   numeric NOT NULL CHECK (cache_read_usd_per_mtok >= 0),
    effective_from            timestamptz NOT NULL,
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by                uuid,
    UNIQUE (model, effective_from)
);
COMMENT ON TABLE keen.model_prices IS 'USD per million tokens by model, dated; a change is a new row (usage keeps its price_id)';
INSERT INTO keen.model_prices (model, input_usd_per_mtok, output_usd_per_mtok, cache_write_usd_per_mtok,
                               cache_read_usd_per_mtok, effective_from) VALUES
    ('claude-opus-4-5', 5, 25, 6.25, 0.50, '2025-11-24 00:00:00+00'),
    ('claude-sonnet-4-5', 3, 15, 3.75, 0.30, '2025-11-24 00:00:00+00'),
    ('claude-haiku-4-5', 1, 5, 1.25, 0.10, '2025-11-24 00:00:00+00');

CREATE TABLE keen.llm_usage (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    session_id          uuid NOT NULL,
    model               text NOT NULL,
    price_id            uuid NOT NULL REFERENCES keen.model_prices (id),
    input_tokens        bigint NOT NULL,
    output_tokens       bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    cache_read_tokens   bigint NOT NULL,
    claude_cost_usd     numeric NOT NULL,
    markup_multiplier   numeric(10,4) NOT NULL,
    charged_credits     numeric(20,6) NOT NULL,
    transaction_id      uuid,
    request_id          text,
    latency_ms          bigint,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id)
);
-- Retries: one row per provider request id and session (record_llm_usage's look-up).
CREATE UNIQUE INDEX llm_usage_request_key ON keen.llm_usage (session_id, request_id) WHERE request_id IS NOT NULL;
-- usage_by_model: one user's calls over a range of days.
CREATE INDEX llm_usage_user_time_idx ON keen.llm_usage (user_id, created_at);
-- The daily rollup reads a day of every tenant: an append-only table, so BRIN serves it.
CREATE INDEX llm_usage_created_at_brin ON keen.llm_usage USING brin (created_at);
COMMENT ON TABLE keen.llm_usage IS 'one priced LLM call of a session; written only by keen.record_llm_usage, with its ledger row (transaction_id)';
COMMENT ON COLUMN keen.llm_usage.claude_cost_usd IS 'tokens x price / 10^6, exact (at most 12 decimal places)';
COMMENT ON COLUMN keen.llm_usage.charged_credits IS 'credits taken from the balance (0 for an admin bypass or a cost that rounds to 0)';

CREATE TABLE keen.daily_model_usage (
    date_bucket         date NOT NULL,
    model               text NOT NULL,
    calls               bigint NOT NULL DEFAULT 0,
    users               bigint NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    claude_cost_usd     numeric NOT NULL DEFAULT 0,
    credits             numeric(20,6) NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (date_bucket, model)
);
COMMENT ON TABLE keen.daily_model_usage IS 'platform-wide LLM usage per UTC day and model (keen.rollup_daily_analytics)';

-- The 24-hour dashboard reads agent_sessions.claude_cost_usd: rebuilt after the type change.
-- squawk-ignore ban-drop-view
DROP MATERIALIZED VIEW keen.admin_dashboard_metrics;

RESET ROLE;

-- Each type change below is numeric(20,6) -> numeric: binary-coercible, a catalog change with
-- no rewrite and no scan (squawk cannot tell that from the statement, hence the ignores).
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_transactions DROP CONSTRAINT credit_transactions_claude_cost_usd_check;
-- squawk-ignore changing-column-type
ALTER TABLE keen.credit_transactions ALTER COLUMN claude_cost_usd TYPE numeric;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.credit_reservations DROP CONSTRAINT credit_reservations_estimated_claude_cost_usd_check;
-- squawk-ignore changing-column-type
ALTER TABLE keen.credit_reservations ALTER COLUMN estimated_claude_cost_usd TYPE numeric;
-- squawk-ignore ban-drop-constraint
ALTER TABLE keen.agent_sessions DROP CONSTRAINT agent_sessions_claude_cost_usd_check;
-- squawk-ignore changing-column-type
ALTER TABLE keen.agent_sessions ALTER COLUMN claude_cost_usd TYPE numeric;
-- Enforced on every new row at once; validated (without blocking writes) by a later migration.
ALTER TABLE keen.agent_sessions
    ADD CONSTRAINT agent_sessions_claude_cost_usd_check CHECK (claude_cost_usd >= 0) NOT VALID;
-- squawk-ignore changing-column-type
ALTER TABLE keen.daily_usage_stats ALTER COLUMN total_claude_cost_usd TYPE numeric;
-- squawk-ignore changing-column-type
ALTER TABLE keen.daily_analytics ALTER COLUMN total_claude_costs_usd TYPE numeric;

SET ROLE keen_owner;

-- As in 0007, with the cost kept exact and, per hour, each model's calls, cost and credits.
CREATE MATERIALIZED VIEW keen.admin_dashboard_metrics AS
SELECT h.hour_bucket,
       pg_catalog.count(s.id)::bigint                                              AS sessions_started,
       pg_catalog.count(s.id) FILTER (WHERE s.execution_status = 'completed')::bigint AS sessions_completed,
       pg_catalog.count(s.id) FILTER (WHERE s.execution_status = 'failed')::bigint    AS sessions_failed,
       pg_catalog.count(s.id) FILTER (WHERE s.is_admin_session)::bigint               AS admin_sessions,
       COALESCE(pg_catalog.sum(s.tokens_used), 0)::bigint                          AS total_tokens,
       COALESCE(pg_catalog.sum(s.context_tokens_used), 0)::bigint                  AS total_context_tokens,
       COALESCE(pg_catalog.sum(s.claude_cost_usd), 0)::numeric                     AS total_claude_costs,
       COALESCE(pg_catalog.sum(s.keen_cost_credits), 0)::numeric(20,6)             AS total_credit_cost,
       pg_catalog.round(pg_catalog.avg(s.keen_cost_credits), 6)                    AS avg_credit_cost_per_session,
       pg_catalog.round(pg_catalog.avg(s.session_depth), 2)                        AS avg_recursion_depth,
       pg_catalog.max(s.session_depth)                                             AS max_recursion_depth,
       COALESCE((SELECT pg_catalog.jsonb_object_agg(m.model, pg_catalog.jsonb_build_object(
                            'calls', m.calls, 'claude_cost_usd', m.cost, 'credits', m.credits))
                   FROM (SELECT u.model, pg_catalog.count(*) AS calls, pg_catalog.sum(u.claude_cost_usd) AS cost,
                                pg_catalog.sum(u.charged_credits) AS credits
                           FROM keen.llm_usage u
                          WHERE u.created_at >= h.hour_bucket AND u.created_at < h.hour_bucket + interval '1 hour'
                          GROUP BY u.model) m), '{}'::jsonb)                       AS cost_by_model,
       pg_catalog.now()                                                            AS refreshed_at
  FROM pg_catalog.generate_series(pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC') - interval '23 hours',
                                  pg_catalog.date_trunc('hour', pg_catalog.now(), 'UTC'),
                                  interval '1 hour') AS h (hour_bucket)
  LEFT JOIN keen.agent_sessions s
         ON s.start_time >= h.hour_bucket AND s.start_time < h.hour_bucket + interval '1 hour'
 GROUP BY h.hour_bucket
WITH DATA;
-- A view of 24 rows made in this transaction: CONCURRENTLY is neither possible nor needed.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX admin_dashboard_metrics_hour_key ON keen.admin_dashboard_metrics (hour_bucket);

RESET ROLE;

REVOKE ALL ON keen.admin_dashboard_metrics FROM PUBLIC;
COMMENT ON MATERIALIZED VIEW keen.admin_dashboard_metrics IS
    'Agent sessions and LLM cost per model of the last 24 UTC hours by hour; no RLS, so no grants: admins read keen.dashboard_metrics().';

ALTER TABLE keen.model_prices ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.model_prices FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.llm_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.llm_usage FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_model_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_model_usage FORCE ROW LEVEL SECURITY;
REVOKE ALL ON keen.model_prices, keen.llm_usage, keen.daily_model_usage FROM PUBLIC;
GRANT SELECT ON keen.model_prices, keen.llm_usage, keen.daily_model_usage TO keen_app, keen_maintenance;
