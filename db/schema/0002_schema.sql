-- 0002: the whole keen schema: tables, types, indexes, grants and row-level security switches.
-- Policies live in db/policies and functions in db/functions (re-applied on every deploy).
-- Tenant tables carry user_id and reference each other through (user_id, id) so that no row
-- can point into another tenant's data.

CREATE SCHEMA keen AUTHORIZATION keen_owner;
CREATE SCHEMA IF NOT EXISTS keen_ext;
CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA keen_ext;
DO $ext$
BEGIN
    -- pgcrypto installed earlier in another schema: move it where the functions look for it.
    IF (SELECT n.nspname FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pgcrypto') <> 'keen_ext' THEN
        ALTER EXTENSION pgcrypto SET SCHEMA keen_ext;
    END IF;
END
$ext$;

GRANT USAGE ON SCHEMA keen TO keen_app, keen_maintenance, keen_auth;
GRANT USAGE ON SCHEMA keen_ext TO keen_owner, keen_auth, keen_app, keen_maintenance;
-- Functions are private until granted, whoever creates them.
ALTER DEFAULT PRIVILEGES FOR ROLE keen_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE keen_auth REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

SET ROLE keen_owner;

-- Money: 6 decimal places, never NaN or infinite.
CREATE DOMAIN keen.credit_amount AS numeric(20,6)
    CHECK (VALUE IS NULL OR (VALUE <> 'NaN'::numeric AND VALUE > -100000000000000 AND VALUE < 100000000000000));

-- Platform settings (markup multiplier, depth limits...). Read by everyone, changed by admins.
CREATE TABLE keen.settings (
    key          text PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_]*$'),
    value        jsonb NOT NULL,
    description  text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);
INSERT INTO keen.settings (key, value, description) VALUES
    ('markup_multiplier', '5.0', 'credits charged per USD of Claude cost; stored on every transaction'),
    ('default_max_session_depth', '10', 'deepest agent session below a root, unless agent_options.max_depth says less'),
    ('hard_max_session_depth', '50', 'no agent_options.max_depth may exceed this'),
    ('bcrypt_cost', '12', 'bcrypt work factor for passwords');

-- Checksums of the repeatable files (db/functions, db/policies) as last applied: doctor
-- reports drift between the files and what the database runs.
CREATE TABLE keen.deployed_files (
    path         text PRIMARY KEY,
    sha256       text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE keen.users (
    id                        uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    email                     varchar(255) NOT NULL CHECK (email = pg_catalog.lower(email) AND email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
    username                  varchar(64) NOT NULL,
    password_hash             varchar(255) NOT NULL,
    display_name              varchar(255),
    avatar_url                text,
    role                      varchar(20) NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'super_admin')),
    is_admin                  boolean NOT NULL DEFAULT false,
    admin_privileges          jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(admin_privileges) = 'object'),
    email_verified            boolean NOT NULL DEFAULT false,
    email_verification_token  varchar(255),
    account_status            varchar(20) NOT NULL DEFAULT 'active' CHECK (account_status IN ('active', 'suspended', 'banned', 'deleted')),
    mfa_enabled               boolean NOT NULL DEFAULT false,
    mfa_secret                varchar(255),
    recovery_codes            text[],
    timezone                  varchar(50) NOT NULL DEFAULT 'UTC',
    preferences               jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(preferences) = 'object'),
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_login_at             timestamptz,
    last_login_ip             inet
);
CREATE UNIQUE INDEX users_email_key ON keen.users (email);
CREATE UNIQUE INDEX users_username_key ON keen.users (pg_catalog.lower(username));
CREATE INDEX users_created_at_idx ON keen.users (created_at);
CREATE INDEX users_admin_idx ON keen.users (id) WHERE is_admin;

CREATE TABLE keen.auth_tokens (
    id                   uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id              uuid NOT NULL REFERENCES keen.users (id),
    token_type           varchar(20) NOT NULL DEFAULT 'api_key' CHECK (token_type IN ('api_key', 'jwt_refresh', 'session')),
    token_hash           varchar(255) NOT NULL,
    token_name           varchar(255),
    scopes               text[] NOT NULL DEFAULT '{}',
    expires_at           timestamptz,
    last_used_at         timestamptz,
    usage_count          integer NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    created_ip           inet,
    last_used_ip         inet,
    user_agent           text,
    is_active            boolean NOT NULL DEFAULT true,
    revoked_at           timestamptz,
    rate_limit_per_hour  integer DEFAULT 1000,
    bypass_limits        boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, id)
);
CREATE UNIQUE INDEX auth_tokens_token_hash_key ON keen.auth_tokens (token_hash);
CREATE INDEX auth_tokens_user_id_idx ON keen.auth_tokens (user_id);

CREATE TABLE keen.credit_accounts (
    id                       uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                  uuid NOT NULL UNIQUE REFERENCES keen.users (id),
    current_balance          keen.credit_amount NOT NULL DEFAULT 0,
    lifetime_purchased       keen.credit_amount NOT NULL DEFAULT 0,
    lifetime_spent           keen.credit_amount NOT NULL DEFAULT 0,
    daily_limit              keen.credit_amount CHECK (daily_limit >= 0),
    monthly_limit            keen.credit_amount CHECK (monthly_limit >= 0),
    auto_recharge_enabled    boolean NOT NULL DEFAULT false,
    auto_recharge_threshold  keen.credit_amount DEFAULT 10 CHECK (auto_recharge_threshold >= 0),
    auto_recharge_amount     keen.credit_amount DEFAULT 50 CHECK (auto_recharge_amount > 0),
    unlimited_credits        boolean NOT NULL DEFAULT false,
    bypass_billing           boolean NOT NULL DEFAULT false,
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (current_balance >= 0),
    UNIQUE (user_id, id)
);

CREATE TABLE keen.agent_sessions (
    id                       uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                  uuid NOT NULL REFERENCES keen.users (id),
    session_id               varchar(64) NOT NULL CHECK (pg_catalog.length(session_id) > 0),
    parent_session_id        uuid,
    session_depth            integer NOT NULL DEFAULT 0 CHECK (session_depth >= 0),
    git_branch               varchar(255) NOT NULL,
    vision                   text NOT NULL,
    working_directory        text NOT NULL,
    current_phase            varchar(20) NOT NULL DEFAULT 'EXPLORE' CHECK (current_phase IN ('EXPLORE', 'PLAN', 'FOUND', 'SUMMON', 'COMPLETE')),
    phase_started_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    agent_options            jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(agent_options) = 'object'),
    start_time               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    end_time                 timestamptz,
    last_activity_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    iteration_count          integer NOT NULL DEFAULT 0 CHECK (iteration_count >= 0),
    tool_calls_count         integer NOT NULL DEFAULT 0 CHECK (tool_calls_count >= 0),
    claude_cost_usd          keen.credit_amount NOT NULL DEFAULT 0 CHECK (claude_cost_usd >= 0),
    keen_cost_credits        keen.credit_amount NOT NULL DEFAULT 0 CHECK (keen_cost_credits >= 0),
    tokens_used              bigint NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    context_tokens_used      bigint NOT NULL DEFAULT 0 CHECK (context_tokens_used >= 0),
    files_modified           text[] NOT NULL DEFAULT '{}',
    files_created            text[] NOT NULL DEFAULT '{}',
    files_deleted            text[] NOT NULL DEFAULT '{}',
    execution_status         varchar(20) NOT NULL DEFAULT 'running' CHECK (execution_status IN ('running', 'completed', 'failed', 'cancelled')),
    success                  boolean,
    error_message            text,
    completion_report        jsonb,
    streaming_enabled        boolean NOT NULL DEFAULT true,
    websocket_connections    text[] NOT NULL DEFAULT '{}',
    is_admin_session         boolean NOT NULL DEFAULT false,
    bypass_credit_deduction  boolean NOT NULL DEFAULT false,
    created_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at               timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, id),
    UNIQUE (user_id, session_id),
    FOREIGN KEY (user_id, parent_session_id) REFERENCES keen.agent_sessions (user_id, id),
    CHECK (id <> parent_session_id),
    CHECK ((parent_session_id IS NULL) = (session_depth = 0))
);
CREATE INDEX agent_sessions_parent_idx ON keen.agent_sessions (parent_session_id, git_branch) WHERE parent_session_id IS NOT NULL;
CREATE INDEX agent_sessions_user_start_idx ON keen.agent_sessions (user_id, start_time DESC);
CREATE INDEX agent_sessions_start_time_idx ON keen.agent_sessions (start_time);
CREATE INDEX agent_sessions_end_time_idx ON keen.agent_sessions (end_time) WHERE end_time IS NOT NULL;

CREATE TABLE keen.credit_transactions (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    entry_no            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id             uuid NOT NULL,
    account_id          uuid NOT NULL,
    transaction_type    varchar(20) NOT NULL CHECK (transaction_type IN ('purchase', 'usage', 'refund', 'adjustment', 'admin_bypass')),
    amount              keen.credit_amount NOT NULL,
    balance_after       keen.credit_amount NOT NULL CHECK (balance_after >= 0),
    claude_cost_usd     keen.credit_amount CHECK (claude_cost_usd >= 0),
    markup_multiplier   numeric(10,4) CHECK (markup_multiplier > 0 AND markup_multiplier <> 'NaN'::numeric),
    session_id          uuid,
    stripe_payment_intent_id varchar(255),
    description         text NOT NULL,
    metadata            jsonb NOT NULL DEFAULT '{}',
    is_admin_bypass     boolean NOT NULL DEFAULT false,
    idempotency_key     text CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 255),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by_ip       inet,
    UNIQUE (user_id, id),
    FOREIGN KEY (user_id, account_id) REFERENCES keen.credit_accounts (user_id, id),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id),
    CHECK (NOT is_admin_bypass OR (transaction_type = 'admin_bypass' AND amount = 0)),
    CHECK (transaction_type <> 'usage' OR amount < 0),
    CHECK (transaction_type <> 'purchase' OR amount > 0)
);
CREATE INDEX credit_transactions_account_idx ON keen.credit_transactions (account_id, entry_no DESC);
CREATE INDEX credit_transactions_user_idx ON keen.credit_transactions (user_id, entry_no DESC);
CREATE INDEX credit_transactions_session_idx ON keen.credit_transactions (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX credit_transactions_created_at_idx ON keen.credit_transactions (created_at);
CREATE UNIQUE INDEX credit_transactions_idempotency_key ON keen.credit_transactions (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE keen.credit_reservations (
    id                          uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                     uuid NOT NULL,
    account_id                  uuid NOT NULL,
    session_id                  uuid,
    estimated_claude_cost_usd   keen.credit_amount NOT NULL CHECK (estimated_claude_cost_usd > 0),
    markup_multiplier           numeric(10,4) NOT NULL CHECK (markup_multiplier > 0),
    held_credits                keen.credit_amount NOT NULL CHECK (held_credits >= 0),
    status                      varchar(20) NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'captured', 'released')),
    expires_at                  timestamptz NOT NULL,
    idempotency_key             text CHECK (pg_catalog.length(idempotency_key) BETWEEN 1 AND 255),
    transaction_id              uuid,
    created_at                  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    ended_at                    timestamptz,
    UNIQUE (user_id, id),
    FOREIGN KEY (user_id, account_id) REFERENCES keen.credit_accounts (user_id, id),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id),
    FOREIGN KEY (user_id, transaction_id) REFERENCES keen.credit_transactions (user_id, id),
    CHECK ((status = 'held') = (ended_at IS NULL)),
    CHECK ((status = 'captured') = (transaction_id IS NOT NULL))
);
CREATE INDEX credit_reservations_live_idx ON keen.credit_reservations (account_id, expires_at) WHERE status = 'held';
CREATE UNIQUE INDEX credit_reservations_idempotency_key ON keen.credit_reservations (account_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE keen.phase_transitions (
    id                        uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    session_id                uuid NOT NULL,
    user_id                   uuid NOT NULL,
    from_phase                varchar(20) NOT NULL CHECK (from_phase IN ('EXPLORE', 'PLAN', 'FOUND', 'SUMMON', 'COMPLETE')),
    to_phase                  varchar(20) NOT NULL CHECK (to_phase IN ('EXPLORE', 'PLAN', 'FOUND', 'SUMMON', 'COMPLETE')),
    transition_timestamp      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    duration_ms               bigint CHECK (duration_ms >= 0),
    summary                   text NOT NULL DEFAULT '',
    key_findings              text[] NOT NULL DEFAULT '{}',
    next_actions              text[] NOT NULL DEFAULT '{}',
    confidence                numeric(3,2) CHECK (confidence BETWEEN 0 AND 1),
    estimated_time_remaining  varchar(255),
    phase_metadata            jsonb NOT NULL DEFAULT '{}',
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id)
);
CREATE INDEX phase_transitions_session_idx ON keen.phase_transitions (session_id, transition_timestamp);
CREATE INDEX phase_transitions_user_idx ON keen.phase_transitions (user_id);
CREATE INDEX phase_transitions_timestamp_idx ON keen.phase_transitions (transition_timestamp);

CREATE TABLE keen.tool_executions (
    id                   uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    session_id           uuid NOT NULL,
    user_id              uuid NOT NULL,
    tool_name            varchar(100) NOT NULL CHECK (pg_catalog.length(tool_name) > 0),
    tool_parameters      jsonb NOT NULL DEFAULT '{}',
    execution_timestamp  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    execution_time_ms    integer NOT NULL CHECK (execution_time_ms >= 0),
    success              boolean NOT NULL,
    result_data          jsonb,
    error_message        text,
    tokens_consumed      integer NOT NULL DEFAULT 0 CHECK (tokens_consumed >= 0),
    cost                 keen.credit_amount NOT NULL DEFAULT 0 CHECK (cost >= 0),
    execution_context    jsonb NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id)
);
CREATE INDEX tool_executions_session_idx ON keen.tool_executions (session_id, execution_timestamp);
CREATE INDEX tool_executions_user_idx ON keen.tool_executions (user_id);
CREATE INDEX tool_executions_timestamp_idx ON keen.tool_executions (execution_timestamp);

CREATE TABLE keen.git_operations (
    id                   uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    session_id           uuid NOT NULL,
    user_id              uuid NOT NULL,
    operation_type       varchar(20) NOT NULL CHECK (operation_type IN ('commit', 'branch', 'merge', 'push', 'pull', 'clone', 'checkout', 'rebase')),
    branch_name          varchar(255) NOT NULL,
    commit_hash          varchar(64),
    operation_timestamp  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    commit_message       text,
    files_changed        text[] NOT NULL DEFAULT '{}',
    lines_added          integer NOT NULL DEFAULT 0 CHECK (lines_added >= 0),
    lines_deleted        integer NOT NULL DEFAULT 0 CHECK (lines_deleted >= 0),
    merge_conflicts      jsonb,
    success              boolean NOT NULL,
    error_message        text,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id)
);
CREATE INDEX git_operations_session_idx ON keen.git_operations (session_id, operation_timestamp);
CREATE INDEX git_operations_user_idx ON keen.git_operations (user_id);
CREATE INDEX git_operations_timestamp_idx ON keen.git_operations (operation_timestamp);

CREATE TABLE keen.websocket_connections (
    id                      uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                 uuid NOT NULL REFERENCES keen.users (id),
    session_id              uuid,
    connection_id           varchar(255) NOT NULL CHECK (pg_catalog.length(connection_id) > 0),
    client_ip               inet NOT NULL,
    user_agent              text,
    client_type             varchar(50) NOT NULL CHECK (client_type IN ('dashboard', 'cli', 'mobile', 'api')),
    connected_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_ping_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    disconnected_at         timestamptz,
    subscribed_events       text[] NOT NULL DEFAULT '{}',
    session_filters         uuid[],
    admin_connection        boolean NOT NULL DEFAULT false,
    can_view_all_sessions   boolean NOT NULL DEFAULT false,
    connection_status       varchar(20) NOT NULL DEFAULT 'active' CHECK (connection_status IN ('active', 'inactive', 'closed')),
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, connection_id),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id),
    CHECK ((connection_status = 'closed') = (disconnected_at IS NOT NULL))
);
CREATE INDEX websocket_connections_session_idx ON keen.websocket_connections (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX websocket_connections_live_ping_idx ON keen.websocket_connections (last_ping_at) WHERE connection_status <> 'closed';

-- Append-only event stream, partitioned by month of created_at; retention drops partitions.
CREATE SEQUENCE keen.streaming_events_event_id_seq AS bigint;
CREATE TABLE keen.streaming_events (
    event_id         bigint NOT NULL DEFAULT pg_catalog.nextval('keen.streaming_events_event_id_seq'),
    session_id       uuid NOT NULL,
    user_id          uuid NOT NULL,
    event_type       varchar(50) NOT NULL CHECK (pg_catalog.length(event_type) > 0),
    event_timestamp  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event_data       jsonb NOT NULL DEFAULT '{}',
    event_source     varchar(50) NOT NULL DEFAULT 'agent' CHECK (event_source IN ('agent', 'git', 'tool', 'system')),
    delivered_to     text[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (event_id, created_at),
    FOREIGN KEY (user_id, session_id) REFERENCES keen.agent_sessions (user_id, id)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE keen.streaming_events_event_id_seq OWNED BY keen.streaming_events.event_id;
-- Catches any month nobody prepared a partition for, so an insert never fails for that.
CREATE TABLE keen.streaming_events_default PARTITION OF keen.streaming_events DEFAULT;
CREATE INDEX streaming_events_session_idx ON keen.streaming_events (session_id, event_id);
CREATE INDEX streaming_events_user_idx ON keen.streaming_events (user_id);

CREATE TABLE keen.daily_usage_stats (
    id                           uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                      uuid NOT NULL REFERENCES keen.users (id),
    date_bucket                  date NOT NULL,
    sessions_started             integer NOT NULL DEFAULT 0,
    sessions_completed           integer NOT NULL DEFAULT 0,
    sessions_failed              integer NOT NULL DEFAULT 0,
    sessions_cancelled           integer NOT NULL DEFAULT 0,
    total_session_time_seconds   bigint NOT NULL DEFAULT 0,
    explore_phase_time_seconds   bigint NOT NULL DEFAULT 0,
    plan_phase_time_seconds      bigint NOT NULL DEFAULT 0,
    found_phase_time_seconds     bigint NOT NULL DEFAULT 0,
    summon_phase_time_seconds    bigint NOT NULL DEFAULT 0,
    complete_phase_time_seconds  bigint NOT NULL DEFAULT 0,
    agents_spawned               integer NOT NULL DEFAULT 0,
    max_recursion_depth          integer NOT NULL DEFAULT 0,
    tool_executions              integer NOT NULL DEFAULT 0,
    unique_tools_used            text[] NOT NULL DEFAULT '{}',
    total_tokens_consumed        bigint NOT NULL DEFAULT 0,
    total_cost                   keen.credit_amount NOT NULL DEFAULT 0,
    total_claude_cost_usd        keen.credit_amount NOT NULL DEFAULT 0,
    credits_purchased            keen.credit_amount NOT NULL DEFAULT 0,
    credits_used                 keen.credit_amount NOT NULL DEFAULT 0,
    admin_bypass_transactions    integer NOT NULL DEFAULT 0,
    files_modified               integer NOT NULL DEFAULT 0,
    files_created                integer NOT NULL DEFAULT 0,
    git_operations               integer NOT NULL DEFAULT 0,
    created_at                   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, date_bucket)
);
CREATE INDEX daily_usage_stats_date_idx ON keen.daily_usage_stats (date_bucket);

-- Platform-wide rollup: one row per UTC day; no user_id, admins and maintenance only.
CREATE TABLE keen.daily_analytics (
    id                            uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    date_bucket                   date NOT NULL UNIQUE,
    total_users                   integer NOT NULL DEFAULT 0,
    active_users                  integer NOT NULL DEFAULT 0,
    new_users                     integer NOT NULL DEFAULT 0,
    total_sessions                integer NOT NULL DEFAULT 0,
    successful_sessions           integer NOT NULL DEFAULT 0,
    failed_sessions               integer NOT NULL DEFAULT 0,
    cancelled_sessions            integer NOT NULL DEFAULT 0,
    avg_session_duration_minutes  numeric(12,2),
    total_claude_costs_usd        keen.credit_amount NOT NULL DEFAULT 0,
    total_credit_revenue          keen.credit_amount NOT NULL DEFAULT 0,
    total_credits_purchased       keen.credit_amount NOT NULL DEFAULT 0,
    total_credits_used            keen.credit_amount NOT NULL DEFAULT 0,
    total_tokens_consumed         bigint NOT NULL DEFAULT 0,
    context_tokens_used           bigint NOT NULL DEFAULT 0,
    total_agents_spawned          integer NOT NULL DEFAULT 0,
    avg_recursion_depth           numeric(6,2),
    max_recursion_depth           integer,
    admin_sessions                integer NOT NULL DEFAULT 0,
    admin_bypass_transactions     integer NOT NULL DEFAULT 0,
    explore_phase_time_seconds    bigint NOT NULL DEFAULT 0,
    plan_phase_time_seconds       bigint NOT NULL DEFAULT 0,
    found_phase_time_seconds      bigint NOT NULL DEFAULT 0,
    summon_phase_time_seconds     bigint NOT NULL DEFAULT 0,
    complete_phase_time_seconds   bigint NOT NULL DEFAULT 0,
    created_at                    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at                    timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Append-only, hash-chained audit trail (see db/functions/users.sql for the chain).
CREATE TABLE keen.audit_logs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_name        text NOT NULL DEFAULT 'main',
    chain_seq         bigint NOT NULL CHECK (chain_seq > 0),
    prev_hash         bytea,
    row_hash          bytea NOT NULL,
    event_type        varchar(30) NOT NULL,
    event_subtype     varchar(50),
    user_id           uuid REFERENCES keen.users (id),
    actor_id          uuid REFERENCES keen.users (id),
    session_id        uuid,
    request_id        varchar(100),
    ip_address        inet,
    user_agent        text,
    event_data        jsonb NOT NULL DEFAULT '{}',
    risk_level        varchar(10) NOT NULL DEFAULT 'low' CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    is_admin_action   boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    UNIQUE (chain_name, chain_seq)
);
CREATE INDEX audit_logs_user_idx ON keen.audit_logs (user_id, created_at DESC);
CREATE INDEX audit_logs_event_type_idx ON keen.audit_logs (event_type, created_at DESC);

RESET ROLE;

-- Row-level security: enabled and forced on every table that holds a user's data, so the
-- SECURITY DEFINER functions (owned by keen_owner) run under the policies too.
ALTER TABLE keen.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.users FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.auth_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.auth_tokens FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_accounts FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_transactions FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.credit_reservations FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.agent_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.phase_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.phase_transitions FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.tool_executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.tool_executions FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.git_operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.git_operations FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.websocket_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.websocket_connections FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.streaming_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.streaming_events FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.streaming_events_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.streaming_events_default FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_usage_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_usage_stats FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_analytics ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.daily_analytics FORCE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE keen.audit_logs FORCE ROW LEVEL SECURITY;

-- Grants: keen_app reads (under RLS) and never writes; secrets are out of its reach.
REVOKE ALL ON ALL TABLES IN SCHEMA keen FROM PUBLIC;
GRANT SELECT (id, email, username, display_name, avatar_url, role, is_admin, admin_privileges,
              email_verified, account_status, mfa_enabled, timezone, preferences, created_at,
              updated_at, last_login_at, last_login_ip)
    ON keen.users TO keen_app, keen_maintenance;
GRANT SELECT (id, user_id, token_type, token_name, scopes, expires_at, last_used_at, usage_count,
              created_ip, last_used_ip, user_agent, is_active, revoked_at, rate_limit_per_hour,
              bypass_limits, created_at, updated_at)
    ON keen.auth_tokens TO keen_app, keen_maintenance;
GRANT SELECT ON keen.settings, keen.credit_accounts, keen.credit_transactions,
                keen.credit_reservations, keen.agent_sessions, keen.phase_transitions,
                keen.tool_executions, keen.git_operations, keen.websocket_connections,
                keen.streaming_events, keen.daily_usage_stats, keen.daily_analytics,
                keen.audit_logs
    TO keen_app, keen_maintenance;
GRANT SELECT ON keen.deployed_files TO keen_maintenance;
-- keen_auth decides who the actor is: it reads the identity columns of users, nothing else.
GRANT SELECT (id, is_admin, account_status) ON keen.users TO keen_auth;
