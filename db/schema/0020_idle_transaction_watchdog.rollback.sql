REVOKE pg_read_all_stats, pg_signal_backend FROM keen_owner;
