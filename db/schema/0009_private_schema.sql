-- 0009: schema keen is the API, keen_private holds the helpers.
--   Every function left in keen is executable by some login role; the helpers (actor proof,
--   actor checks, the ledger's locked path, the audit chain, triggers) move to keen_private,
--   which no login role may use. Functions that exist already (an upgraded database) are
--   moved with their dependants (triggers keep pointing at them); db/functions then replaces
--   their bodies in keen_private. On a fresh database only the ones 0004 and 0006 created exist.
SET lock_timeout = '5s';
SET statement_timeout = '60s';

CREATE SCHEMA IF NOT EXISTS keen_private AUTHORIZATION keen_owner;
REVOKE ALL ON SCHEMA keen_private FROM PUBLIC;
-- keen_auth owns the identity helpers (it reads keen.auth_secrets): it needs to create there.
GRANT USAGE, CREATE ON SCHEMA keen_private TO keen_auth;
ALTER DEFAULT PRIVILEGES FOR ROLE keen_owner IN SCHEMA keen_private REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE keen_auth IN SCHEMA keen_private REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

DO $move$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'keen'::regnamespace
           AND p.proname = ANY (ARRAY[
               'actor_proof', 'require_actor', 'require_admin', 'require_read_committed', 'set_actor',
               'analytics_check_range',
               'credit_authorize', 'credit_charge', 'credit_check_amount', 'credit_check_spend',
               'credit_check_text', 'credit_hold_replay', 'credit_hold_result', 'credit_live_holds',
               'credit_lock', 'credit_refresh_holds', 'credit_replay', 'credit_request_recharge',
               'refuse_ledger_change',
               'agent_sessions_tree_path', 'lock_session',
               'session_connection_detach', 'secure_event_partition', 'may_manage_event_partitions',
               'audit_logs_append_only', 'audit_row_hash', 'auth_check_password', 'auth_find_api_key',
               'auth_record_login_failure', 'auth_recorder_exec', 'configure_login_recorder',
               'set_account_status', 'users_check_password', 'write_audit'])
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET SCHEMA keen_private', v_fn);
    END LOOP;
END
$move$;
