-- sessions.sql: agent sessions. The recursive tree (tree_path, see db/schema/0005), phases,
-- tool executions, git operations, and completion that charges through keen.deduct_credits.
--
-- Every function here runs as keen_owner under the FORCED row-level security of
-- db/policies/sessions.sql: a session is visible to its owner and to admins only, so another
-- tenant's session reads as absent (P0002) without any extra test.
-- Lock order: a parent's row before a child is inserted under it (create_session); a session's
-- own row before anything that changes it, then the credit account (inside deduct_credits).

-- keen_private.agent_sessions_tree_path: BEFORE INSERT trigger. Fills session_depth, root_session_id
-- and tree_path from the parent row (same user), so that direct inserts (bulk loads,
-- benchmarks) keep the tree consistent too; on UPDATE it refuses any change of the tree's shape.
-- Who: fires for every writer. SECURITY INVOKER on purpose: inside the API functions the invoker
-- is keen_owner under the actor's policies already, and a superuser bulk load must see the
-- parents it has just inserted (a definer without an actor would see none).
-- enable_seqscan is off: the parent lookup's plan is cached per connection, and a plan made
-- while the table was empty is a sequential scan; a bulk load that follows would scan the whole
-- growing table once a row (measured: 100,000 rows after 10,000 took 97-161 s instead of 4.5 s).
-- Raises: 23503 when the parent is absent or another user's; 22023 on a change of
-- parent_session_id, session_depth, tree_path, root_session_id, id or user_id.
CREATE OR REPLACE FUNCTION keen_private.agent_sessions_tree_path()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, keen, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    v_parent_path bytea;
    v_parent_depth integer;
    v_parent_root uuid;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.parent_session_id IS DISTINCT FROM OLD.parent_session_id
           OR NEW.session_depth <> OLD.session_depth OR NEW.tree_path <> OLD.tree_path
           OR NEW.root_session_id <> OLD.root_session_id OR NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id THEN
            RAISE EXCEPTION 'the place of session % in its tree cannot change', OLD.id
                USING ERRCODE = '22023';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.parent_session_id IS NULL THEN
        NEW.session_depth := 0;
        NEW.root_session_id := NEW.id;
        NEW.tree_path := '\x00'::bytea || pg_catalog.uuid_send(NEW.id);
    ELSE
        SELECT p.tree_path, p.session_depth, p.root_session_id INTO v_parent_path, v_parent_depth, v_parent_root
          FROM keen.agent_sessions p
         WHERE p.id = NEW.parent_session_id AND p.user_id = NEW.user_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'parent session % not found for this user', NEW.parent_session_id
                USING ERRCODE = '23503';
        END IF;
        NEW.session_depth := v_parent_depth + 1;
        NEW.root_session_id := v_parent_root;
        NEW.tree_path := v_parent_path || '\x00'::bytea || pg_catalog.uuid_send(NEW.id);
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION keen_private.agent_sessions_tree_path() FROM PUBLIC;
COMMENT ON FUNCTION keen_private.agent_sessions_tree_path() IS 'Trigger: fills session_depth, root_session_id and tree_path from the parent; the tree shape is fixed.';

DROP TRIGGER IF EXISTS agent_sessions_tree_path ON keen.agent_sessions;
CREATE TRIGGER agent_sessions_tree_path
    BEFORE INSERT ON keen.agent_sessions
    FOR EACH ROW EXECUTE FUNCTION keen_private.agent_sessions_tree_path();
DROP TRIGGER IF EXISTS agent_sessions_tree_fixed ON keen.agent_sessions;
CREATE TRIGGER agent_sessions_tree_fixed
    BEFORE UPDATE OF parent_session_id, session_depth, tree_path, root_session_id, id, user_id ON keen.agent_sessions
    FOR EACH ROW EXECUTE FUNCTION keen_private.agent_sessions_tree_path();

-- keen_private.lock_session: the session row, locked (FOR NO KEY UPDATE) for a change.
-- Who: the functions of this file only (no EXECUTE for keen_app).
-- Raises: P0002 when the session is absent or another tenant's; KN004 when p_running and the
-- session is no longer running.
CREATE OR REPLACE FUNCTION keen_private.lock_session(p_id uuid, p_running boolean)
RETURNS keen.agent_sessions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
BEGIN
    SELECT * INTO v_session FROM keen.agent_sessions s WHERE s.id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % not found', p_id USING ERRCODE = 'P0002';
    END IF;
    IF p_running AND v_session.execution_status <> 'running' THEN
        RAISE EXCEPTION 'session % is %, not running', v_session.session_id, v_session.execution_status
            USING ERRCODE = 'KN004';
    END IF;
    RETURN v_session;
END
$$;
REVOKE ALL ON FUNCTION keen_private.lock_session(uuid, boolean) FROM PUBLIC;
COMMENT ON FUNCTION keen_private.lock_session(uuid, boolean) IS 'Internal: locks a visible session (P0002), optionally one still running (KN004).';

-- keen.create_session: starts an agent session, a root or the child of p_parent_id.
-- Depth is the parent's + 1. The deepest depth allowed in a tree is the least of the
-- agent_options.max_depth given on the way down from the root (each between 0 and the
-- hard_max_session_depth setting, itself capped at 100 by the tree_path index), or the
-- default_max_session_depth setting when none gives one. A parent whose agent_options say
-- "execution_mode": "sequential" runs one child at a time. The parent row is locked first, so
-- concurrent creations under one parent see each other.
-- Who: the actor for itself, an admin for anyone (42501 otherwise; also 42501 for an API key whose scopes do not cover it:
-- sessions:write).
-- Raises: 22023 for a blank session id, branch, vision or working directory, a vision,
-- working directory or agent_options over its size cap (keen_private.size_cap), agent_options that
-- are not an object, a max_depth that is not an integer between 0 and the hard maximum, an
-- execution_mode other than 'sequential' or 'parallel'; P0002 for an unknown user or a parent
-- that is absent or another user's; KN004 when the parent is not running, when the depth would
-- pass the maximum, or when a sequential parent already has a running child; 23505 when the
-- user already has a session with this session_id.
CREATE OR REPLACE FUNCTION keen.create_session(p_user_id uuid, p_session_id text, p_git_branch text,
                                               p_vision text, p_working_directory text,
                                               p_parent_id uuid DEFAULT NULL,
                                               p_agent_options jsonb DEFAULT '{}')
RETURNS keen.agent_sessions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    c_depth_cap CONSTANT integer := 100;  -- 17 bytes a level must fit a btree entry
    v_actor uuid := keen.actor_id();
    v_options jsonb := COALESCE(p_agent_options, '{}'::jsonb);
    v_hard integer;
    v_default integer;
    v_own_max integer;
    v_limit integer;
    v_depth integer := 0;
    v_is_admin boolean;
    v_bypass boolean;
    v_parent keen.agent_sessions;
    v_session keen.agent_sessions;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF v_actor IS NULL OR v_actor IS DISTINCT FROM p_user_id THEN
        PERFORM keen_private.require_admin();  -- a session is created by its user or by an admin
    END IF;
    IF p_session_id IS NULL OR pg_catalog.btrim(p_session_id) = '' OR pg_catalog.length(p_session_id) > 64 THEN
        RAISE EXCEPTION 'session id must be 1 to 64 characters' USING ERRCODE = '22023';
    END IF;
    IF p_git_branch IS NULL OR pg_catalog.btrim(p_git_branch) = '' OR pg_catalog.length(p_git_branch) > 255 THEN
        RAISE EXCEPTION 'git branch must be 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF p_vision IS NULL OR pg_catalog.btrim(p_vision) = '' THEN
        RAISE EXCEPTION 'vision must not be blank' USING ERRCODE = '22023';
    END IF;
    IF p_working_directory IS NULL OR pg_catalog.btrim(p_working_directory) = '' THEN
        RAISE EXCEPTION 'working directory must not be blank' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.jsonb_typeof(v_options) <> 'object' THEN
        RAISE EXCEPTION 'agent_options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('vision', p_vision);
    PERFORM keen_private.require_size('working_directory', p_working_directory);
    PERFORM keen_private.require_size('metadata', v_options);

    v_hard := LEAST(keen.setting_numeric('hard_max_session_depth'), c_depth_cap)::integer;
    v_default := LEAST(keen.setting_numeric('default_max_session_depth'), v_hard)::integer;
    IF v_options ? 'max_depth' THEN
        IF pg_catalog.jsonb_typeof(v_options -> 'max_depth') <> 'number'
           OR (v_options ->> 'max_depth')::numeric <> pg_catalog.trunc((v_options ->> 'max_depth')::numeric)
           OR (v_options ->> 'max_depth')::numeric NOT BETWEEN 0 AND v_hard THEN
            RAISE EXCEPTION 'agent_options.max_depth must be an integer from 0 to %', v_hard
                USING ERRCODE = '22023';
        END IF;
        v_own_max := (v_options ->> 'max_depth')::integer;
    END IF;
    IF v_options ? 'execution_mode'
       AND (pg_catalog.jsonb_typeof(v_options -> 'execution_mode') <> 'string'
            OR v_options ->> 'execution_mode' NOT IN ('sequential', 'parallel')) THEN
        RAISE EXCEPTION 'agent_options.execution_mode must be "sequential" or "parallel"'
            USING ERRCODE = '22023';
    END IF;

    SELECT u.is_admin INTO v_is_admin FROM keen.users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'P0002';
    END IF;
    SELECT a.unlimited_credits OR a.bypass_billing INTO v_bypass
      FROM keen.credit_accounts a WHERE a.user_id = p_user_id;

    v_limit := COALESCE(v_own_max, v_default);
    IF p_parent_id IS NOT NULL THEN
        -- The parent's lock serializes its children's creation (the sequential rule).
        SELECT * INTO v_parent FROM keen.agent_sessions s
         WHERE s.id = p_parent_id AND s.user_id = p_user_id
           FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'parent session % not found', p_parent_id USING ERRCODE = 'P0002';
        END IF;
        IF v_parent.execution_status <> 'running' THEN
            RAISE EXCEPTION 'parent session % is %, not running', v_parent.session_id, v_parent.execution_status
                USING ERRCODE = 'KN004';
        END IF;
        v_depth := v_parent.session_depth + 1;
        v_limit := LEAST(COALESCE(v_parent.max_recursion_depth, v_default), COALESCE(v_own_max, v_hard));
        IF v_parent.agent_options ->> 'execution_mode' = 'sequential' AND EXISTS (
            SELECT 1 FROM keen.agent_sessions c
             WHERE c.parent_session_id = p_parent_id AND c.execution_status = 'running'
        ) THEN
            RAISE EXCEPTION 'parent session % is sequential and already has a running child', v_parent.session_id
                USING ERRCODE = 'KN004';
        END IF;
    END IF;
    v_limit := LEAST(v_limit, v_hard);
    IF v_depth > v_limit THEN
        RAISE EXCEPTION 'depth % passes the maximum session depth %', v_depth, v_limit
            USING ERRCODE = 'KN004';
    END IF;

    BEGIN
        INSERT INTO keen.agent_sessions (user_id, session_id, parent_session_id, session_depth, git_branch,
                                         vision, working_directory, agent_options, max_recursion_depth,
                                         is_admin_session, bypass_credit_deduction)
        VALUES (p_user_id, p_session_id, p_parent_id, v_depth, p_git_branch,
                p_vision, p_working_directory, v_options, v_limit,
                v_is_admin, COALESCE(v_bypass, false))
        RETURNING * INTO v_session;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'session id % already exists for this user', p_session_id USING ERRCODE = '23505';
    END;
    RETURN v_session;
END
$$;
REVOKE ALL ON FUNCTION keen.create_session(uuid, text, text, text, text, uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.create_session(uuid, text, text, text, text, uuid, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.create_session(uuid, text, text, text, text, uuid, jsonb) IS
    'Starts an agent session (root or child); 42501, 22023, P0002, KN004 (parent state, depth, sequential), 23505.';

-- keen.get_session: one session.
-- Who: its owner, or an admin. Raises: P0002 when absent or another tenant's; 42501 for an API key whose scopes do not cover it
-- (sessions:read).
CREATE OR REPLACE FUNCTION keen.get_session(p_id uuid)
RETURNS keen.agent_sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    SELECT * INTO v_session FROM keen.agent_sessions s WHERE s.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % not found', p_id USING ERRCODE = 'P0002';
    END IF;
    RETURN v_session;
END
$$;
REVOKE ALL ON FUNCTION keen.get_session(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.get_session(uuid) TO keen_app;
COMMENT ON FUNCTION keen.get_session(uuid) IS 'One session of the actor (any for an admin); P0002 otherwise.';

-- keen.record_phase_transition: moves a running session to another phase and records the phase
-- report: a keen.phase_transitions row whose duration_ms is the time spent in the phase left.
-- phase_started_at and last_activity_at become now (clock time, not transaction start).
-- Who: the session's owner, or an admin; through an API key with a scope list, only with
-- sessions:write (it changes the session, like update_session_progress).
-- Emits phase_change {transition_id, from_phase, to_phase, duration_ms} in the same transaction.
-- Raises: 22023 for a phase outside EXPLORE, PLAN, FOUND, SUMMON, COMPLETE, a confidence outside
-- 0..1, a metadata value that is not an object, an estimate over 255 characters, metadata or a
-- report (summary, findings, next actions) over the metadata cap; P0002 for an
-- absent or foreign session; KN004 when the session is not running or already in that phase;
-- 42501 for an API key whose scopes do not cover it.
CREATE OR REPLACE FUNCTION keen.record_phase_transition(p_id uuid, p_to_phase text,
                                                        p_summary text DEFAULT '',
                                                        p_key_findings text[] DEFAULT '{}',
                                                        p_next_actions text[] DEFAULT '{}',
                                                        p_confidence numeric DEFAULT NULL,
                                                        p_estimated_time_remaining text DEFAULT NULL,
                                                        p_phase_metadata jsonb DEFAULT '{}')
RETURNS keen.phase_transitions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_now timestamptz := pg_catalog.clock_timestamp();
    v_session keen.agent_sessions;
    v_transition keen.phase_transitions;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_to_phase IS NULL OR p_to_phase NOT IN ('EXPLORE', 'PLAN', 'FOUND', 'SUMMON', 'COMPLETE') THEN
        RAISE EXCEPTION 'unknown phase %: one of EXPLORE, PLAN, FOUND, SUMMON, COMPLETE', p_to_phase
            USING ERRCODE = '22023';
    END IF;
    IF p_confidence IS NOT NULL AND (p_confidence = 'NaN'::numeric OR p_confidence NOT BETWEEN 0 AND 1) THEN
        RAISE EXCEPTION 'confidence must be between 0 and 1' USING ERRCODE = '22023';
    END IF;
    IF p_phase_metadata IS NOT NULL AND pg_catalog.jsonb_typeof(p_phase_metadata) <> 'object' THEN
        RAISE EXCEPTION 'phase metadata must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.length(p_estimated_time_remaining) > 255 THEN
        RAISE EXCEPTION 'estimated time remaining longer than 255 characters' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('metadata', p_phase_metadata);
    PERFORM keen_private.require_size('metadata', pg_catalog.concat_ws(' ', p_summary, p_key_findings::text, p_next_actions::text));

    v_session := keen_private.lock_session(p_id, true);
    IF v_session.current_phase = p_to_phase THEN
        RAISE EXCEPTION 'session % is already in phase %', v_session.session_id, p_to_phase
            USING ERRCODE = 'KN004';
    END IF;

    INSERT INTO keen.phase_transitions (session_id, user_id, from_phase, to_phase, transition_timestamp,
                                        duration_ms, summary, key_findings, next_actions, confidence,
                                        estimated_time_remaining, phase_metadata)
    VALUES (v_session.id, v_session.user_id, v_session.current_phase, p_to_phase, v_now,
            GREATEST(0, pg_catalog.round(EXTRACT(EPOCH FROM (v_now - v_session.phase_started_at)) * 1000))::bigint,
            COALESCE(p_summary, ''), COALESCE(p_key_findings, '{}'), COALESCE(p_next_actions, '{}'),
            p_confidence, p_estimated_time_remaining, COALESCE(p_phase_metadata, '{}'))
    RETURNING * INTO v_transition;

    UPDATE keen.agent_sessions s
       SET current_phase = p_to_phase, phase_started_at = v_now, last_activity_at = v_now, updated_at = v_now
     WHERE s.id = v_session.id;
    PERFORM keen_private.emit_session_event(v_session.id, v_session.user_id, 'phase_change',
        pg_catalog.jsonb_build_object('transition_id', v_transition.id, 'from_phase', v_transition.from_phase,
                                      'to_phase', v_transition.to_phase, 'duration_ms', v_transition.duration_ms),
        'agent');
    RETURN v_transition;
END
$$;
REVOKE ALL ON FUNCTION keen.record_phase_transition(uuid, text, text, text[], text[], numeric, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_phase_transition(uuid, text, text, text[], text[], numeric, text, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.record_phase_transition(uuid, text, text, text[], text[], numeric, text, jsonb) IS
    'Moves a running session to another phase with its report; 22023, 42501, P0002, KN004.';

-- keen.update_session_progress: the agent reports progress. A phase different from the current
-- one is a phase change (keen.record_phase_transition, with an empty report); the counters,
-- when given, replace the stored totals; last_activity_at becomes now. A phase change emits
-- phase_change (keen.record_phase_transition).
-- Who: the session's owner, or an admin.
-- Raises: 22023 for an unknown phase or a negative counter; P0002 for an absent or foreign
-- session; KN004 when the session is not running; 42501 for an API key whose scopes do not cover it (sessions:write).
CREATE OR REPLACE FUNCTION keen.update_session_progress(p_id uuid, p_current_phase text DEFAULT NULL,
                                                        p_iteration_count integer DEFAULT NULL,
                                                        p_tool_calls_count integer DEFAULT NULL,
                                                        p_tokens_used bigint DEFAULT NULL,
                                                        p_context_tokens_used bigint DEFAULT NULL)
RETURNS keen.agent_sessions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_current_phase IS NOT NULL AND p_current_phase NOT IN ('EXPLORE', 'PLAN', 'FOUND', 'SUMMON', 'COMPLETE') THEN
        RAISE EXCEPTION 'unknown phase %: one of EXPLORE, PLAN, FOUND, SUMMON, COMPLETE', p_current_phase
            USING ERRCODE = '22023';
    END IF;
    IF p_iteration_count < 0 OR p_tool_calls_count < 0 OR p_tokens_used < 0 OR p_context_tokens_used < 0 THEN
        RAISE EXCEPTION 'progress counters cannot be negative' USING ERRCODE = '22023';
    END IF;

    v_session := keen_private.lock_session(p_id, true);
    IF p_current_phase IS NOT NULL AND p_current_phase <> v_session.current_phase THEN
        PERFORM keen.record_phase_transition(p_id, p_current_phase);
    END IF;
    UPDATE keen.agent_sessions s
       SET iteration_count = COALESCE(p_iteration_count, s.iteration_count),
           tool_calls_count = COALESCE(p_tool_calls_count, s.tool_calls_count),
           tokens_used = COALESCE(p_tokens_used, s.tokens_used),
           context_tokens_used = COALESCE(p_context_tokens_used, s.context_tokens_used),
           last_activity_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.clock_timestamp()
     WHERE s.id = p_id
    RETURNING * INTO v_session;
    RETURN v_session;
END
$$;
REVOKE ALL ON FUNCTION keen.update_session_progress(uuid, text, integer, integer, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.update_session_progress(uuid, text, integer, integer, bigint, bigint) TO keen_app;
COMMENT ON FUNCTION keen.update_session_progress(uuid, text, integer, integer, bigint, bigint) IS
    'Progress of a running session (phase change writes phase_transitions); 22023, P0002, KN004.';

-- keen.complete_session: ends a running session, in one transaction: status completed (p_success)
-- or failed, success, end_time, files, error, report; for a cost above 0 the charge by the
-- rules of keen.deduct_credits (its input checks and its locked path, keen_private.credit_charge) on the
-- owner's account with the idempotency key 'session-complete:<id>', a key deduct_credits
-- reserves for this function (the admin bypass, limits and the ledger are its rules); the
-- cost and the credits actually charged (0 for an admin bypass, whose notional value stays on
-- the ledger row) are added to the session's claude_cost_usd and keen_cost_credits, on top of
-- what keen.record_llm_usage already charged for the session's calls. A successful session
-- enters the COMPLETE phase (a phase_transitions row) if it was not in it yet.
-- The session row is locked first: concurrent completions serialize and all but the first
-- see a finished session.
-- Who: the session's owner, or an admin (who charges the owner).
-- Raises: 22023 for a NULL p_success or a cost that is NULL, NaN, infinite, negative, over
-- 1,000,000 USD, of more than 12 decimals or whose charge rounds to 0; P0002 for an absent or
-- foreign session; KN004 when it is not running (completing twice);
-- KN001, KN002 from the charge, which abort everything: the session stays running, unchanged.
-- Emits session_completed or session_failed {session_id, success, claude_cost_usd,
-- keen_cost_credits, transaction_id, files_created/modified/deleted counts} (and, for a charge,
-- credits_charged) in the same transaction. 22023 also for an error message, report or file
-- lists over their size caps; 42501 for an API key whose scopes do not cover it (sessions:write); 25000 outside READ
-- COMMITTED when there is a cost to charge (the account lock, keen_private.credit_lock).
CREATE OR REPLACE FUNCTION keen.complete_session(p_id uuid, p_success boolean,
                                                 p_claude_cost_usd numeric DEFAULT 0,
                                                 p_files_created text[] DEFAULT '{}',
                                                 p_files_modified text[] DEFAULT '{}',
                                                 p_files_deleted text[] DEFAULT '{}',
                                                 p_error_message text DEFAULT NULL,
                                                 p_completion_report jsonb DEFAULT NULL)
RETURNS keen.agent_sessions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
    v_charge keen.credit_transactions;
    v_multiplier numeric(10,4);
    v_credits numeric := 0.0;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'p_success must be true or false' USING ERRCODE = '22023';
    END IF;
    IF p_claude_cost_usd IS NULL OR p_claude_cost_usd = 'NaN'::numeric
       OR p_claude_cost_usd IN ('Infinity'::numeric, '-Infinity'::numeric) OR p_claude_cost_usd < 0 THEN
        RAISE EXCEPTION 'claude cost must be a finite amount of 0 or more' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('error_message', p_error_message);
    PERFORM keen_private.require_size('completion_report', p_completion_report);
    PERFORM keen_private.require_size('completion_report',
                                      pg_catalog.concat_ws(' ', p_files_created::text, p_files_modified::text, p_files_deleted::text));

    v_session := keen_private.lock_session(p_id, true);
    IF p_claude_cost_usd > 0 THEN
        -- deduct_credits' input rules, then its locked path (keen_private.credit_charge) under the key
        -- 'session-complete:<id>', which deduct_credits refuses to anyone else: nobody can
        -- claim it first and leave the session uncompletable.
        PERFORM keen_private.credit_check_cost('p_claude_cost_usd', p_claude_cost_usd);
        v_multiplier := keen_private.markup_rate(v_session.user_id);
        IF keen_private.usage_charge(p_claude_cost_usd, v_multiplier) <= 0 THEN
            RAISE EXCEPTION 'a cost of % USD rounds to a charge of 0 credits', p_claude_cost_usd USING ERRCODE = '22023';
        END IF;
        v_charge := keen_private.credit_charge_as_ledger(v_session.user_id, p_claude_cost_usd, v_multiplier,
                                       keen_private.usage_charge(p_claude_cost_usd, v_multiplier), p_id,
                                       'Agent session ' || v_session.session_id, 'session-complete:' || p_id,
                                       NULL, '{}'::jsonb);
        v_credits := CASE WHEN v_charge.is_admin_bypass THEN 0 ELSE -v_charge.amount END;
    END IF;
    IF p_success AND v_session.current_phase <> 'COMPLETE' THEN
        PERFORM keen.record_phase_transition(p_id, 'COMPLETE', 'session completed');
    END IF;

    UPDATE keen.agent_sessions s
       SET execution_status = CASE WHEN p_success THEN 'completed' ELSE 'failed' END,
           success = p_success,
           end_time = pg_catalog.clock_timestamp(),
           last_activity_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.clock_timestamp(),
           files_created = COALESCE(p_files_created, '{}'),
           files_modified = COALESCE(p_files_modified, '{}'),
           files_deleted = COALESCE(p_files_deleted, '{}'),
           error_message = p_error_message,
           completion_report = p_completion_report,
           claude_cost_usd = s.claude_cost_usd + p_claude_cost_usd,
           keen_cost_credits = s.keen_cost_credits + v_credits
     WHERE s.id = p_id
    RETURNING * INTO v_session;
    PERFORM keen_private.emit_session_event(v_session.id, v_session.user_id,
        CASE WHEN p_success THEN 'session_completed' ELSE 'session_failed' END,
        pg_catalog.jsonb_build_object('session_id', v_session.session_id, 'success', p_success,
                                      'claude_cost_usd', v_session.claude_cost_usd,
                                      'keen_cost_credits', v_session.keen_cost_credits,
                                      'transaction_id', v_charge.id,
                                      'files_created', pg_catalog.cardinality(v_session.files_created),
                                      'files_modified', pg_catalog.cardinality(v_session.files_modified),
                                      'files_deleted', pg_catalog.cardinality(v_session.files_deleted)),
        'system');
    RETURN v_session;
END
$$;
REVOKE ALL ON FUNCTION keen.complete_session(uuid, boolean, numeric, text[], text[], text[], text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.complete_session(uuid, boolean, numeric, text[], text[], text[], text, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.complete_session(uuid, boolean, numeric, text[], text[], text[], text, jsonb) IS
    'Completes a running session and charges its cost through deduct_credits, atomically; 22023, P0002, KN004, KN001, KN002.';

-- keen.cancel_session: cancels a running session and every running session below it (status
-- cancelled, success false, end_time now, error_message the reason). Nothing is charged.
-- Descendants are locked in tree_path order and updated until none is left running, so a
-- child created concurrently under one of them (its creator held the parent's lock first) is
-- caught by the next pass; after a pass, no running parent is left to create under.
-- Returns the sessions it cancelled, by depth then git_branch.
-- Each cancelled session emits session_cancelled {reason, cancelled_with: p_id}.
-- Who: the session's owner, or an admin.
-- Raises: P0002 for an absent or foreign session; KN004 when it is not running; 22023 for a
-- reason over the description cap; 42501 for an API key whose scopes do not cover it (sessions:write).
CREATE OR REPLACE FUNCTION keen.cancel_session(p_id uuid, p_reason text DEFAULT NULL)
RETURNS SETOF keen.agent_sessions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
    v_reason text := COALESCE(NULLIF(pg_catalog.btrim(p_reason), ''), 'cancelled');
    v_ids uuid[];
    v_more uuid[];
    v_id uuid;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    PERFORM keen_private.require_size('description', p_reason);
    v_session := keen_private.lock_session(p_id, true);
    v_ids := ARRAY[p_id];
    UPDATE keen.agent_sessions s
       SET execution_status = 'cancelled', success = false, error_message = v_reason,
           end_time = pg_catalog.clock_timestamp(), last_activity_at = pg_catalog.clock_timestamp(),
           updated_at = pg_catalog.clock_timestamp()
     WHERE s.id = p_id;
    LOOP
        -- Lock in tree_path order, the order every cancel uses: two cancels of nested subtrees
        -- then meet at the inner session and queue there instead of deadlocking.
        WITH todo AS (
            SELECT s.id FROM keen.agent_sessions s
             WHERE s.tree_path > v_session.tree_path
               AND s.tree_path < v_session.tree_path || '\x01'::bytea
               AND s.execution_status = 'running'
             ORDER BY s.tree_path
               FOR NO KEY UPDATE),
        cancelled AS (
            UPDATE keen.agent_sessions s
               SET execution_status = 'cancelled', success = false, error_message = v_reason,
                   end_time = pg_catalog.clock_timestamp(), last_activity_at = pg_catalog.clock_timestamp(),
                   updated_at = pg_catalog.clock_timestamp()
              FROM todo
             WHERE s.id = todo.id
            RETURNING s.id)
        SELECT pg_catalog.array_agg(c.id) INTO v_more FROM cancelled c;
        EXIT WHEN v_more IS NULL;
        v_ids := v_ids || v_more;
    END LOOP;
    FOREACH v_id IN ARRAY v_ids LOOP
        PERFORM keen_private.emit_session_event(v_id, v_session.user_id, 'session_cancelled',
            pg_catalog.jsonb_build_object('reason', v_reason, 'cancelled_with', p_id), 'system');
    END LOOP;
    RETURN QUERY
        SELECT * FROM keen.agent_sessions s
         WHERE s.id = ANY (v_ids)
         ORDER BY s.session_depth, s.git_branch COLLATE "C", s.id;
END
$$;
REVOKE ALL ON FUNCTION keen.cancel_session(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.cancel_session(uuid, text) TO keen_app;
COMMENT ON FUNCTION keen.cancel_session(uuid, text) IS
    'Cancels a running session and its running descendants, no charge; P0002, KN004.';

-- keen.list_sessions: the actor's sessions (every user's for an admin), newest first,
-- optionally only those of one status.
-- Who: any actor (row-level security decides what it sees; no actor sees nothing).
-- Raises: 22023 for a limit outside 1..1000, a negative offset or an unknown status; 42501 for an API key whose scopes do not cover it
-- (sessions:read).
CREATE OR REPLACE FUNCTION keen.list_sessions(p_limit integer DEFAULT 100, p_offset integer DEFAULT 0,
                                              p_status text DEFAULT NULL)
RETURNS SETOF keen.agent_sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        RAISE EXCEPTION 'offset must be 0 or more' USING ERRCODE = '22023';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('running', 'completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'unknown status %: one of running, completed, failed, cancelled', p_status
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT * FROM keen.agent_sessions s
         WHERE p_status IS NULL OR s.execution_status = p_status
         ORDER BY s.start_time DESC, s.id
         LIMIT p_limit OFFSET p_offset;
END
$$;
REVOKE ALL ON FUNCTION keen.list_sessions(integer, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.list_sessions(integer, integer, text) TO keen_app;
COMMENT ON FUNCTION keen.list_sessions(integer, integer, text) IS
    'The actor''s sessions (all for an admin), newest first; 22023 for bad paging or status.';

-- keen.session_tree: the session and all its descendants, by depth, then git_branch (byte
-- order), then id. A root's tree is one ordered scan of agent_sessions_tree_order_idx
-- (root_session_id, session_depth, git_branch, id): no sort, linear in the tree's size.
-- Any other subtree is one range scan of agent_sessions_tree_path_idx, [P, P || 0x01) holding
-- exactly the paths that start with the session's path P (see db/schema/0005), then a sort.
-- enable_sort is off for this function so that the planner takes the ordered scan for a root
-- even when the tree is most of the table (a sort of 100,000 rows grows faster than linearly
-- and spills to disk); where every plan needs a sort, it sorts as before. jit is off: the
-- disabled sort's cost (and a big tree's) passes jit_above_cost, and compiling a query costs
-- 100 ms or more where running it takes under one.
-- Who: the session's owner, or an admin.
-- Raises: P0002 for an absent or foreign session; 42501 for an API key whose scopes do not cover it (sessions:read).
CREATE OR REPLACE FUNCTION keen.session_tree(p_id uuid)
RETURNS TABLE (id uuid, session_id text, parent_session_id uuid, session_depth integer, git_branch text,
               current_phase text, execution_status text, claude_cost_usd numeric,
               keen_cost_credits numeric, tokens_used bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET enable_sort = off
SET jit = off
AS $$
DECLARE
    v_path bytea;
    v_depth integer;
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    SELECT s.tree_path, s.session_depth INTO v_path, v_depth FROM keen.agent_sessions s WHERE s.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % not found', p_id USING ERRCODE = 'P0002';
    END IF;
    IF v_depth = 0 THEN
        RETURN QUERY
            SELECT s.id, s.session_id::text, s.parent_session_id, s.session_depth, s.git_branch::text,
                   s.current_phase::text, s.execution_status::text, s.claude_cost_usd::numeric,
                   s.keen_cost_credits::numeric, s.tokens_used
              FROM keen.agent_sessions s
             WHERE s.root_session_id = p_id
             ORDER BY s.session_depth, s.git_branch COLLATE "C", s.id;
    ELSE
        RETURN QUERY
            SELECT s.id, s.session_id::text, s.parent_session_id, s.session_depth, s.git_branch::text,
                   s.current_phase::text, s.execution_status::text, s.claude_cost_usd::numeric,
                   s.keen_cost_credits::numeric, s.tokens_used
              FROM keen.agent_sessions s
             WHERE s.tree_path >= v_path AND s.tree_path < v_path || '\x01'::bytea
             ORDER BY s.session_depth, s.git_branch COLLATE "C", s.id;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION keen.session_tree(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.session_tree(uuid) TO keen_app;
COMMENT ON FUNCTION keen.session_tree(uuid) IS 'The session and all its descendants, by depth then git_branch; P0002.';

-- keen.session_tree_summary: one row for the subtree of p_id: how many sessions, the deepest
-- session_depth and the number of levels, the session's own cost and tokens against the whole
-- subtree's, and how many sessions are in each status.
-- jit is off: a big tree's cost passes jit_above_cost, and compiling costs more than running.
-- Who: the session's owner, or an admin; through an API key with a scope list, only with
-- sessions:read (a read of the tree, like session_tree).
-- Raises: P0002 for an absent or foreign session; 42501 for an API key whose scopes do not cover it.
CREATE OR REPLACE FUNCTION keen.session_tree_summary(p_id uuid)
RETURNS TABLE (root_id uuid, session_count bigint, max_depth integer, levels integer,
               own_claude_cost_usd numeric, own_keen_cost_credits numeric, own_tokens_used bigint,
               subtree_claude_cost_usd numeric, subtree_keen_cost_credits numeric, subtree_tokens_used bigint,
               running_count bigint, completed_count bigint, failed_count bigint, cancelled_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
SET jit = off
AS $$
DECLARE
    v_root keen.agent_sessions;
BEGIN
    PERFORM keen_private.require_scope('sessions:read');
    SELECT * INTO v_root FROM keen.agent_sessions s WHERE s.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % not found', p_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT v_root.id, pg_catalog.count(*), pg_catalog.max(s.session_depth),
               pg_catalog.max(s.session_depth) - v_root.session_depth + 1,
               v_root.claude_cost_usd::numeric, v_root.keen_cost_credits::numeric, v_root.tokens_used,
               pg_catalog.sum(s.claude_cost_usd)::numeric, pg_catalog.sum(s.keen_cost_credits)::numeric,
               pg_catalog.sum(s.tokens_used)::bigint,
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'running'),
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'completed'),
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'failed'),
               pg_catalog.count(*) FILTER (WHERE s.execution_status = 'cancelled')
          FROM keen.agent_sessions s
         WHERE s.tree_path >= v_root.tree_path AND s.tree_path < v_root.tree_path || '\x01'::bytea;
END
$$;
REVOKE ALL ON FUNCTION keen.session_tree_summary(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.session_tree_summary(uuid) TO keen_app;
COMMENT ON FUNCTION keen.session_tree_summary(uuid) IS
    'Own versus subtree cost and tokens, counts by status, depth of a session''s subtree; 42501, P0002.';

-- keen.record_tool_execution: records one tool call of a running session (reference 004's
-- tool_executions), adds one to the session's tool_calls_count and touches last_activity_at.
-- Who: the session's owner, or an admin.
-- Raises: 22023 for a blank tool name (or over 100 characters), a NULL success, a negative or
-- NULL execution time, negative tokens, a cost that is negative, NaN or infinite, parameters or
-- context that are not JSON objects, parameters, result, error or context over their size caps;
-- P0002 for an absent or foreign session; KN004 when the session is not running; 42501 for an API key whose scopes do not cover it
-- (sessions:write).
-- Emits tool_execution {tool_execution_id, tool_name, success, execution_time_ms,
-- tokens_consumed} (never the parameters or result) in the same transaction.
CREATE OR REPLACE FUNCTION keen.record_tool_execution(p_session_id uuid, p_tool_name text,
                                                      p_execution_time_ms integer, p_success boolean,
                                                      p_tool_parameters jsonb DEFAULT '{}',
                                                      p_result_data jsonb DEFAULT NULL,
                                                      p_error_message text DEFAULT NULL,
                                                      p_tokens_consumed integer DEFAULT 0,
                                                      p_cost numeric DEFAULT 0,
                                                      p_execution_context jsonb DEFAULT '{}')
RETURNS keen.tool_executions
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
    v_execution keen.tool_executions;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_tool_name IS NULL OR pg_catalog.btrim(p_tool_name) = '' OR pg_catalog.length(p_tool_name) > 100 THEN
        RAISE EXCEPTION 'tool name must be 1 to 100 characters' USING ERRCODE = '22023';
    END IF;
    IF p_success IS NULL OR p_execution_time_ms IS NULL OR p_execution_time_ms < 0
       OR COALESCE(p_tokens_consumed, 0) < 0 THEN
        RAISE EXCEPTION 'success, a non-negative execution time and non-negative tokens are required'
            USING ERRCODE = '22023';
    END IF;
    IF p_cost = 'NaN'::numeric OR p_cost IN ('Infinity'::numeric, '-Infinity'::numeric) OR p_cost < 0 THEN
        RAISE EXCEPTION 'tool cost must be a finite amount of 0 or more' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.jsonb_typeof(COALESCE(p_tool_parameters, '{}')) <> 'object'
       OR pg_catalog.jsonb_typeof(COALESCE(p_execution_context, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'tool parameters and execution context must be JSON objects' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('tool_parameters', p_tool_parameters);
    PERFORM keen_private.require_size('tool_result', p_result_data);
    PERFORM keen_private.require_size('error_message', p_error_message);
    PERFORM keen_private.require_size('metadata', p_execution_context);

    v_session := keen_private.lock_session(p_session_id, true);
    INSERT INTO keen.tool_executions (session_id, user_id, tool_name, tool_parameters, execution_time_ms,
                                      success, result_data, error_message, tokens_consumed, cost,
                                      execution_context)
    VALUES (v_session.id, v_session.user_id, p_tool_name, COALESCE(p_tool_parameters, '{}'), p_execution_time_ms,
            p_success, p_result_data, p_error_message, COALESCE(p_tokens_consumed, 0), COALESCE(p_cost, 0),
            COALESCE(p_execution_context, '{}'))
    RETURNING * INTO v_execution;
    UPDATE keen.agent_sessions s
       SET tool_calls_count = s.tool_calls_count + 1,
           last_activity_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()
     WHERE s.id = v_session.id;
    PERFORM keen_private.emit_session_event(v_session.id, v_session.user_id, 'tool_execution',
        pg_catalog.jsonb_build_object('tool_execution_id', v_execution.id, 'tool_name', v_execution.tool_name,
                                      'success', v_execution.success,
                                      'execution_time_ms', v_execution.execution_time_ms,
                                      'tokens_consumed', v_execution.tokens_consumed),
        'tool');
    RETURN v_execution;
END
$$;
REVOKE ALL ON FUNCTION keen.record_tool_execution(uuid, text, integer, boolean, jsonb, jsonb, text, integer, numeric, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_tool_execution(uuid, text, integer, boolean, jsonb, jsonb, text, integer, numeric, jsonb) TO keen_app;
COMMENT ON FUNCTION keen.record_tool_execution(uuid, text, integer, boolean, jsonb, jsonb, text, integer, numeric, jsonb) IS
    'Records a tool call of a running session; 22023, P0002, KN004.';

-- keen.record_git_operation: records one git operation of a running session (reference 004's
-- git_operations) and touches its last_activity_at.
-- Who: the session's owner, or an admin.
-- Raises: 22023 for an operation type outside commit, branch, merge, push, pull, clone,
-- checkout, rebase, a blank branch (or over 255 characters), a commit hash that is not 7 to 64
-- hex digits, negative line counts, a NULL success, a commit message, file list and conflicts
-- (together) over the git_details cap or an error over its cap; P0002 for an absent or foreign
-- session; KN004 when the session is not running; 42501 for an API key whose scopes do not cover it (sessions:write).
-- Emits git_operation {git_operation_id, operation_type, branch_name, commit_hash, success,
-- lines_added, lines_deleted} in the same transaction.
CREATE OR REPLACE FUNCTION keen.record_git_operation(p_session_id uuid, p_operation_type text,
                                                     p_branch_name text, p_success boolean,
                                                     p_commit_hash text DEFAULT NULL,
                                                     p_commit_message text DEFAULT NULL,
                                                     p_files_changed text[] DEFAULT '{}',
                                                     p_lines_added integer DEFAULT 0,
                                                     p_lines_deleted integer DEFAULT 0,
                                                     p_merge_conflicts jsonb DEFAULT NULL,
                                                     p_error_message text DEFAULT NULL)
RETURNS keen.git_operations
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, keen, keen_private, pg_temp
AS $$
DECLARE
    v_session keen.agent_sessions;
    v_operation keen.git_operations;
BEGIN
    PERFORM keen_private.require_scope('sessions:write');
    IF p_operation_type IS NULL
       OR p_operation_type NOT IN ('commit', 'branch', 'merge', 'push', 'pull', 'clone', 'checkout', 'rebase') THEN
        RAISE EXCEPTION 'unknown git operation %', p_operation_type USING ERRCODE = '22023';
    END IF;
    IF p_branch_name IS NULL OR pg_catalog.btrim(p_branch_name) = '' OR pg_catalog.length(p_branch_name) > 255 THEN
        RAISE EXCEPTION 'branch name must be 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF p_commit_hash IS NOT NULL AND p_commit_hash !~ '^[0-9a-fA-F]{7,64}$' THEN
        RAISE EXCEPTION 'commit hash must be 7 to 64 hex digits' USING ERRCODE = '22023';
    END IF;
    IF p_success IS NULL OR COALESCE(p_lines_added, 0) < 0 OR COALESCE(p_lines_deleted, 0) < 0 THEN
        RAISE EXCEPTION 'success is required and line counts cannot be negative' USING ERRCODE = '22023';
    END IF;
    PERFORM keen_private.require_size('git_details',
                                      pg_catalog.concat_ws(' ', p_commit_message, p_files_changed::text, p_merge_conflicts::text));
    PERFORM keen_private.require_size('error_message', p_error_message);

    v_session := keen_private.lock_session(p_session_id, true);
    INSERT INTO keen.git_operations (session_id, user_id, operation_type, branch_name, commit_hash,
                                     commit_message, files_changed, lines_added, lines_deleted,
                                     merge_conflicts, success, error_message)
    VALUES (v_session.id, v_session.user_id, p_operation_type, p_branch_name, pg_catalog.lower(p_commit_hash),
            p_commit_message, COALESCE(p_files_changed, '{}'), COALESCE(p_lines_added, 0),
            COALESCE(p_lines_deleted, 0), p_merge_conflicts, p_success, p_error_message)
    RETURNING * INTO v_operation;
    UPDATE keen.agent_sessions s
       SET last_activity_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()
     WHERE s.id = v_session.id;
    PERFORM keen_private.emit_session_event(v_session.id, v_session.user_id, 'git_operation',
        pg_catalog.jsonb_build_object('git_operation_id', v_operation.id, 'operation_type', v_operation.operation_type,
                                      'branch_name', v_operation.branch_name, 'commit_hash', v_operation.commit_hash,
                                      'success', v_operation.success, 'lines_added', v_operation.lines_added,
                                      'lines_deleted', v_operation.lines_deleted),
        'git');
    RETURN v_operation;
END
$$;
REVOKE ALL ON FUNCTION keen.record_git_operation(uuid, text, text, boolean, text, text, text[], integer, integer, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keen.record_git_operation(uuid, text, text, boolean, text, text, text[], integer, integer, jsonb, text) TO keen_app;
COMMENT ON FUNCTION keen.record_git_operation(uuid, text, text, boolean, text, text, text[], integer, integer, jsonb, text) IS
    'Records a git operation of a running session; 22023, P0002, KN004.';
