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

-- Usage metering: prices are public to every actor (the gateway shows them); usage rows are
-- their owner's and the admins'. Writes go through keen.set_model_price and keen.record_llm_usage.
DROP POLICY IF EXISTS "Model prices are visible to everyone and written by admins" ON keen.model_prices;
CREATE POLICY "Model prices are visible to everyone and written by admins" ON keen.model_prices
    FOR ALL
    USING (true)
    WITH CHECK ((SELECT keen.actor_is_admin()));

DROP POLICY IF EXISTS "LLM usage is visible to its owner and to admins" ON keen.llm_usage;
CREATE POLICY "LLM usage is visible to its owner and to admins" ON keen.llm_usage
    FOR ALL
    USING (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()))
    WITH CHECK (user_id = (SELECT keen.actor_id()) OR (SELECT keen.actor_sees_all_tenants()));
