-- Policies for the ledger: credit_accounts, credit_transactions, credit_reservations.

DROP POLICY IF EXISTS "Credit accounts are visible to their owner and to admins" ON keen.credit_accounts;
CREATE POLICY "Credit accounts are visible to their owner and to admins" ON keen.credit_accounts
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Credit transactions are visible to their owner and to admins" ON keen.credit_transactions;
CREATE POLICY "Credit transactions are visible to their owner and to admins" ON keen.credit_transactions
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Credit reservations are visible to their owner and to admins" ON keen.credit_reservations;
CREATE POLICY "Credit reservations are visible to their owner and to admins" ON keen.credit_reservations
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));

DROP POLICY IF EXISTS "Recharge requests are visible to their owner and to admins" ON keen.credit_recharge_requests;
CREATE POLICY "Recharge requests are visible to their owner and to admins" ON keen.credit_recharge_requests
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));
