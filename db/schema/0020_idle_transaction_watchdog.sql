-- 0020: the idle-transaction watchdog may end runaway sessions of the login roles.
--   keen_app's timeouts (0010) are role defaults, which a session may change with SET: a leaked
--   connection can turn idle_in_transaction_session_timeout off and sit on the locks its calls
--   took (an account, the event order of a user, the audit chain under SET CONSTRAINTS
--   IMMEDIATE). keen.reap_idle_transactions (db/functions/streaming.sql, a job every minute)
--   terminates such sessions. keen_owner, which owns it, needs pg_read_all_stats to see another
--   role's backend state in pg_stat_activity and pg_signal_backend to end it (never a
--   superuser's backend).
SET lock_timeout = '5s';
SET statement_timeout = '60s';

GRANT pg_read_all_stats, pg_signal_backend TO keen_owner;
