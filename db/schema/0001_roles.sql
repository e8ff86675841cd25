-- 0001: the roles keen-db runs under. Roles are cluster-wide, so this migration only creates
-- the ones that are missing (a second database on the same server shares them).
--   keen_owner       NOLOGIN: owns schema keen, its tables and its SECURITY DEFINER functions;
--                    subject to row-level security (tables FORCE it).
--   keen_auth        NOLOGIN, BYPASSRLS: owns only the few functions that must read
--                    keen.users to decide who the actor is (policies cannot call back into
--                    a table guarded by a policy that calls them).
--   keen_app         LOGIN: the client's role; EXECUTE on the API, SELECT under RLS, no writes.
--   keen_maintenance LOGIN: cross-tenant jobs (rollups, retention, ledger verification);
--                    sees every tenant through the policies' maintenance clause, never by
--                    loosening a tenant's own rule.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_owner') THEN
        CREATE ROLE keen_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_auth') THEN
        CREATE ROLE keen_auth NOLOGIN BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_app') THEN
        CREATE ROLE keen_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'keen_maintenance') THEN
        CREATE ROLE keen_maintenance LOGIN;
    END IF;
END
$roles$;
