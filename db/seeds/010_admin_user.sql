-- The super-admin (CONTRACT.md section 5), idempotent: run as a superuser by `keen-db seed`.
-- Parameters: %(email)s, %(username)s, %(password)s. The password hash changes only when the
-- password does, so a second run leaves every row as it was.
INSERT INTO keen.users AS u (email, username, password_hash, display_name, role, is_admin,
                             admin_privileges, email_verified, account_status)
VALUES (
    pg_catalog.lower(%(email)s),
    %(username)s,
    keen_ext.crypt(%(password)s, keen_ext.gen_salt('bf', 12)),
    'Ahiya Butman (Admin)',
    'super_admin',
    true,
    '{"unlimited_credits": true, "bypass_rate_limits": true, "view_all_analytics": true,
      "manage_users": true, "system_monitoring": true, "priority_execution": true,
      "user_impersonation": true, "system_diagnostics": true}'::jsonb,
    true,
    'active'
)
ON CONFLICT (email) DO UPDATE
   SET username = EXCLUDED.username,
       display_name = EXCLUDED.display_name,
       role = EXCLUDED.role,
       is_admin = true,
       admin_privileges = EXCLUDED.admin_privileges,
       email_verified = true,
       account_status = 'active',
       password_hash = CASE
           WHEN keen_ext.crypt(%(password)s, u.password_hash) = u.password_hash THEN u.password_hash
           ELSE EXCLUDED.password_hash
       END,
       updated_at = CASE
           WHEN (u.username, u.role, u.is_admin, u.admin_privileges, u.email_verified, u.account_status)
                IS NOT DISTINCT FROM (EXCLUDED.username, EXCLUDED.role, true, EXCLUDED.admin_privileges, true, 'active')
            AND keen_ext.crypt(%(password)s, u.password_hash) = u.password_hash
           THEN u.updated_at
           ELSE pg_catalog.now()
       END
 WHERE u.is_admin;  -- an existing non-admin is never promoted (keen_db.deploy.seed refuses first)
