-- The admin's credit account: unlimited credits, billing bypassed (one statement per file:
-- seeds run with parameters, which allow one statement each).
INSERT INTO keen.credit_accounts AS a (user_id, unlimited_credits, bypass_billing)
SELECT u.id, true, true FROM keen.users u WHERE u.email = pg_catalog.lower(%(email)s)
ON CONFLICT (user_id) DO UPDATE
   SET unlimited_credits = true, bypass_billing = true
 WHERE NOT (a.unlimited_credits AND a.bypass_billing);
