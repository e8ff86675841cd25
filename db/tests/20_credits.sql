-- 20_credits: the ledger functions, each with its success path and each error code; the
-- append-only trigger; the recharge requests table, its policy and the privileges.
BEGIN;
SELECT plan(113);

-- Actors and their ids, kept in a temporary table (pgTAP files use no psql variables).
CREATE TEMPORARY TABLE ids (name text PRIMARY KEY, id uuid);
CREATE FUNCTION pg_temp.id(p_name text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = p_name $$;
INSERT INTO ids SELECT 'admin', id FROM keen.users WHERE role = 'super_admin';
INSERT INTO ids SELECT 'alice', id FROM keen.register_user('alice@example.com', 'alice', 'correct horse');
INSERT INTO ids SELECT 'bob', id FROM keen.register_user('bob@example.com', 'bob', 'correct horse');
INSERT INTO ids VALUES ('nobody', '00000000-0000-4000-8000-ffffffffffff');
INSERT INTO keen.agent_sessions (user_id, session_id, git_branch, vision, working_directory)
SELECT pg_temp.id('bob'), 'bob-session', 'main', 'v', '/w';
INSERT INTO ids SELECT 'bob_session', id FROM keen.agent_sessions WHERE session_id = 'bob-session';

-- Structure ---------------------------------------------------------------------------------
SELECT has_table('keen', 'credit_recharge_requests', 'auto-recharge requests have a table');
SELECT policies_are('keen', 'credit_recharge_requests',
                    ARRAY['Recharge requests are visible to their owner and to admins'],
                    'recharge requests have their tenant policy');
SELECT has_trigger('keen', 'credit_transactions', 'credit_transactions_append_only', 'the ledger has its append-only trigger');
SELECT has_trigger('keen', 'credit_transactions', 'credit_transactions_no_truncate', 'the ledger refuses TRUNCATE by trigger');
SELECT is_definer('keen', 'deduct_credits', ARRAY['uuid', 'numeric', 'uuid', 'text', 'text'], 'deduct_credits is SECURITY DEFINER');
SELECT ok(pg_catalog.has_function_privilege('keen_app', 'keen.deduct_credits(uuid,numeric,uuid,text,text)', 'EXECUTE')
          AND pg_catalog.has_function_privilege('keen_app', 'keen.refund_credits(uuid,text,numeric)', 'EXECUTE'),
          'keen_app may call the ledger API');
SELECT ok(NOT pg_catalog.has_function_privilege('keen_app', 'keen_private.credit_charge(uuid,numeric,numeric,numeric,uuid,text,text,uuid,jsonb)', 'EXECUTE')
          AND NOT pg_catalog.has_function_privilege('keen_app', 'keen_private.credit_replay(uuid,text,text,numeric,uuid)', 'EXECUTE'),
          'keen_app may not call the internal helpers');
SELECT ok(pg_catalog.has_function_privilege('keen_maintenance', 'keen.verify_ledger()', 'EXECUTE'),
          'the maintenance role may verify the ledger');

-- add_credits -------------------------------------------------------------------------------
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT results_eq($$SELECT transaction_type::text, amount::numeric, balance_after::numeric
                      FROM keen.add_credits(pg_temp.id('alice'), 100, 'purchase', 'pi-1')$$,
                  $$VALUES ('purchase', 100::numeric, 100::numeric)$$, 'add_credits: an admin buys 100 credits for alice');
SELECT is((SELECT id FROM keen.add_credits(pg_temp.id('alice'), 100, 'purchase', 'pi-1')),
          (SELECT id FROM keen.credit_transactions WHERE idempotency_key = 'pi-1'),
          'add_credits: a retry with the same key returns the first purchase');
SELECT throws_ok($$SELECT keen.add_credits(pg_temp.id('alice'), 99, 'purchase', 'pi-1')$$, 'KN005', NULL,
                 'add_credits: the same key for another amount is KN005');
SELECT throws_ok($$SELECT keen.add_credits(pg_temp.id('alice'), 'NaN', 'purchase')$$, '22023', NULL,
                 'add_credits: NaN is 22023');
SELECT throws_ok($$SELECT keen.add_credits(pg_temp.id('alice'), 1.0000001, 'purchase')$$, '22023', NULL,
                 'add_credits: more than 6 decimal places is 22023 (refused, not rounded)');
SELECT throws_ok($$SELECT keen.add_credits(pg_temp.id('nobody'), 1, 'purchase')$$, 'P0002', NULL,
                 'add_credits: an unknown user is P0002');
SELECT keen.add_credits(pg_temp.id('bob'), 20, 'purchase');
SELECT keen.act_as(pg_temp.id('alice'));
SELECT throws_ok($$SELECT keen.add_credits(pg_temp.id('alice'), 1, 'purchase')$$, '42501', NULL,
                 'add_credits: a non-admin is 42501');

-- deduct_credits ----------------------------------------------------------------------------
SELECT results_eq($$SELECT transaction_type::text, amount::numeric, balance_after::numeric, claude_cost_usd::numeric,
                           markup_multiplier::numeric, is_admin_bypass
                      FROM keen.deduct_credits(pg_temp.id('alice'), 2.00, NULL, 'run', 'run-1')$$,
                  $$VALUES ('usage', -10::numeric, 90::numeric, 2::numeric, 5::numeric, false)$$,
                  'deduct_credits: a cost of 2.00 is charged 10.00 credits at 5x');
SELECT is((SELECT balance_after::numeric FROM keen.deduct_credits(pg_temp.id('alice'), 2.00, NULL, 'run', 'run-1')),
          90::numeric, 'deduct_credits: a retry with the same key charges nothing more');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 3, NULL, 'run', 'run-1')$$, 'KN005', NULL,
                 'deduct_credits: the same key with another cost is KN005');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 18.000001)$$, 'KN001', NULL,
                 'deduct_credits: a charge above the balance is KN001');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 0)$$, '22023', NULL,
                 'deduct_credits: a zero cost is 22023');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), '-Infinity')$$, '22023', NULL,
                 'deduct_credits: an infinite cost is 22023');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), NULL)$$, '22023', NULL,
                 'deduct_credits: a NULL cost is 22023');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('bob'), 1)$$, '42501', NULL,
                 'deduct_credits: another user''s account is 42501');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 1, pg_temp.id('bob_session'))$$, 'P0002', NULL,
                 'deduct_credits: another user''s session is P0002');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 1, gen_random_uuid())$$, 'P0002', NULL,
                 'deduct_credits: a session that does not exist is P0002, like another user''s');
SELECT keen.set_spending_limits(pg_temp.id('alice'), 15, NULL);
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('alice'), 1.000001)$$, 'KN002', NULL,
                 'deduct_credits: passing the daily limit is KN002');
SELECT keen.set_spending_limits(pg_temp.id('alice'), NULL, NULL);
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT results_eq($$SELECT transaction_type::text, amount::numeric, claude_cost_usd::numeric, is_admin_bypass
                      FROM keen.deduct_credits(pg_temp.id('admin'), 10.50)$$,
                  $$VALUES ('admin_bypass', 0::numeric, 10.5::numeric, true)$$,
                  'deduct_credits: the admin''s usage is recorded, not charged');
SELECT throws_ok($$SELECT keen.deduct_credits(pg_temp.id('nobody'), 1)$$, 'P0002', NULL,
                 'deduct_credits: an unknown account is P0002');

-- reserve_credits ---------------------------------------------------------------------------
SELECT keen.act_as(pg_temp.id('alice'));
INSERT INTO ids SELECT 'hold1', reservation_id FROM keen.reserve_credits(pg_temp.id('alice'), 2, NULL, '15 minutes', 'hold-1');
SELECT results_eq($$SELECT held_credits, available_balance FROM keen.reserve_credits(pg_temp.id('alice'), 2, NULL, '15 minutes', 'hold-1')$$,
                  $$VALUES (10::numeric, 80::numeric)$$,
                  'reserve_credits: holds 10 credits of 90 (a retry returns the first hold)');
SELECT is((SELECT count(*)::int FROM keen.credit_reservations WHERE user_id = pg_temp.id('alice')), 1,
          'reserve_credits: the retry held nothing more');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 3, NULL, '15 minutes', 'hold-1')$$, 'KN005', NULL,
                 'reserve_credits: the same key for another estimate is KN005');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 16.000001)$$, 'KN001', NULL,
                 'reserve_credits: more than the available balance is KN001');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 1, NULL, '0 seconds')$$, '22023', NULL,
                 'reserve_credits: a TTL of 0 is 22023');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('bob'), 1)$$, '42501', NULL,
                 'reserve_credits: another user''s account is 42501');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 1, pg_temp.id('bob_session'))$$, 'P0002', NULL,
                 'reserve_credits: another user''s session is P0002');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 1, gen_random_uuid())$$, 'P0002', NULL,
                 'reserve_credits: a session that does not exist is P0002, like another user''s');
SELECT keen.set_spending_limits(pg_temp.id('alice'), NULL, 25);
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('alice'), 1.000001)$$, 'KN002', NULL,
                 'reserve_credits: usage plus holds past the monthly limit is KN002');
SELECT keen.set_spending_limits(pg_temp.id('alice'), NULL, NULL);
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT is((SELECT held_credits FROM keen.reserve_credits(pg_temp.id('admin'), 1000)), 0::numeric,
          'reserve_credits: an unlimited account holds 0');
SELECT throws_ok($$SELECT keen.reserve_credits(pg_temp.id('nobody'), 1)$$, 'P0002', NULL,
                 'reserve_credits: an unknown account is P0002');

-- capture_reservation -----------------------------------------------------------------------
SELECT keen.act_as(pg_temp.id('alice'));
SELECT throws_ok($$SELECT keen.capture_reservation(pg_temp.id('hold1'), 18.000001)$$, 'KN001', NULL,
                 'capture_reservation: a cost the balance cannot cover is KN001');
SELECT throws_ok($$SELECT keen.capture_reservation(pg_temp.id('hold1'), 0)$$, '22023', NULL,
                 'capture_reservation: a zero cost is 22023');
SELECT keen.set_spending_limits(pg_temp.id('alice'), 20, NULL);
SELECT throws_ok($$SELECT keen.capture_reservation(pg_temp.id('hold1'), 2.000001)$$, 'KN002', NULL,
                 'capture_reservation: passing the daily limit is KN002');
SELECT keen.set_spending_limits(pg_temp.id('alice'), NULL, NULL);
SELECT results_eq($$SELECT amount::numeric, balance_after::numeric, metadata->>'reservation_id'
                      FROM keen.capture_reservation(pg_temp.id('hold1'), 3, 'captured')$$,
                  $$VALUES (-15::numeric, 75::numeric, pg_temp.id('hold1')::text)$$,
                  'capture_reservation: charges the actual cost (more than the estimate) and names the hold');
SELECT throws_ok($$SELECT keen.capture_reservation(pg_temp.id('hold1'), 1)$$, 'KN003', NULL,
                 'capture_reservation: a captured hold is KN003');
SELECT throws_ok($$SELECT keen.capture_reservation(gen_random_uuid(), 1)$$, 'P0002', NULL,
                 'capture_reservation: an unknown hold is P0002');

-- release_reservation -----------------------------------------------------------------------
INSERT INTO ids SELECT 'hold2', reservation_id FROM keen.reserve_credits(pg_temp.id('alice'), 1);
SELECT lives_ok($$SELECT keen.release_reservation(pg_temp.id('hold2'))$$, 'release_reservation: ends a live hold');
SELECT is((SELECT available_balance FROM keen.get_balance(pg_temp.id('alice'))), 75::numeric,
          'release_reservation: the released credits are available again');
SELECT throws_ok($$SELECT keen.release_reservation(pg_temp.id('hold2'))$$, 'KN003', NULL,
                 'release_reservation: a released hold is KN003');
INSERT INTO ids SELECT 'hold3', reservation_id FROM keen.reserve_credits(pg_temp.id('alice'), 1);
UPDATE keen.credit_reservations SET expires_at = now() - interval '1 second' WHERE id = pg_temp.id('hold3');
SELECT throws_ok($$SELECT keen.release_reservation(pg_temp.id('hold3'))$$, 'KN003', NULL,
                 'release_reservation: an expired hold is KN003');
SELECT keen.act_as(pg_temp.id('bob'));
SELECT throws_ok($$SELECT keen.release_reservation(pg_temp.id('hold3'))$$, 'P0002', NULL,
                 'release_reservation: another tenant''s hold is P0002');

-- get_balance, set_spending_limits, validate_credits, credit_history ------------------------
SELECT keen.act_as(pg_temp.id('alice'));
SELECT results_eq($$SELECT current_balance, available_balance, lifetime_purchased, lifetime_spent, unlimited_credits,
                           spent_today, spent_this_month FROM keen.get_balance(pg_temp.id('alice'))$$,
                  $$VALUES (75::numeric, 75::numeric, 100::numeric, 25::numeric, false, 25::numeric, 25::numeric)$$,
                  'get_balance: the balance, an expired hold not counted, and the usage of the day and month');
SELECT throws_ok($$SELECT * FROM keen.get_balance(pg_temp.id('bob'))$$, '42501', NULL,
                 'get_balance: another user''s account is 42501');
SELECT lives_ok($$SELECT keen.set_spending_limits(pg_temp.id('alice'), 100, 1000)$$,
                'set_spending_limits: the owner sets limits');
SELECT results_eq($$SELECT daily_limit, monthly_limit FROM keen.get_balance(pg_temp.id('alice'))$$,
                  $$VALUES (100::numeric, 1000::numeric)$$, 'set_spending_limits: the limits are stored');
SELECT throws_ok($$SELECT keen.set_spending_limits(pg_temp.id('alice'), -1, NULL)$$, '22023', NULL,
                 'set_spending_limits: a negative limit is 22023');
SELECT throws_ok($$SELECT keen.set_spending_limits(pg_temp.id('bob'), 1, 1)$$, '42501', NULL,
                 'set_spending_limits: another user''s account is 42501');
SELECT results_eq($$SELECT sufficient, current_balance, required, shortfall, unlimited
                      FROM keen.validate_credits(pg_temp.id('alice'), 16)$$,
                  $$VALUES (false, 75::numeric, 80::numeric, 5::numeric, false)$$,
                  'validate_credits: 16 USD needs 80 credits, 5 short');
SELECT throws_ok($$SELECT * FROM keen.validate_credits(pg_temp.id('alice'), 'NaN')$$, '22023', NULL,
                 'validate_credits: NaN is 22023');
SELECT throws_ok($$SELECT * FROM keen.validate_credits(pg_temp.id('bob'), 1)$$, '42501', NULL,
                 'validate_credits: another user''s account is 42501');
SELECT results_eq($$SELECT transaction_type::text, amount::numeric FROM keen.credit_history(pg_temp.id('alice'), 2)$$,
                  $$VALUES ('usage', -15::numeric), ('usage', -10::numeric)$$,
                  'credit_history: newest first, limited');
SELECT throws_ok($$SELECT * FROM keen.credit_history(pg_temp.id('alice'), 1001)$$, '22023', NULL,
                 'credit_history: a limit over 1000 is 22023');
SELECT throws_ok($$SELECT * FROM keen.credit_history(pg_temp.id('bob'))$$, '42501', NULL,
                 'credit_history: another user''s account is 42501');
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT throws_ok($$SELECT * FROM keen.get_balance(pg_temp.id('nobody'))$$, 'P0002', NULL,
                 'get_balance: an unknown account is P0002');
SELECT throws_ok($$SELECT keen.set_spending_limits(pg_temp.id('nobody'), 1, 1)$$, 'P0002', NULL,
                 'set_spending_limits: an unknown account is P0002');
SELECT throws_ok($$SELECT * FROM keen.validate_credits(pg_temp.id('nobody'), 1)$$, 'P0002', NULL,
                 'validate_credits: an unknown account is P0002');
SELECT throws_ok($$SELECT * FROM keen.credit_history(pg_temp.id('nobody'))$$, 'P0002', NULL,
                 'credit_history: an unknown account is P0002');

-- refund_credits ----------------------------------------------------------------------------
SELECT results_eq($$SELECT transaction_type::text, amount::numeric, balance_after::numeric
                      FROM keen.refund_credits((SELECT id FROM keen.credit_transactions WHERE idempotency_key = 'run-1'),
                                               'agent failed')$$,
                  $$VALUES ('refund', 10::numeric, 85::numeric)$$,
                  'refund_credits: a whole usage refund gives the 10 credits back');
SELECT is((SELECT amount::numeric FROM keen.credit_transactions WHERE idempotency_key = 'run-1'), -10::numeric,
          'refund_credits: the original row is unchanged');
SELECT throws_ok($$SELECT keen.refund_credits((SELECT id FROM keen.credit_transactions WHERE idempotency_key = 'run-1'), 'again')$$,
                 '23505', NULL, 'refund_credits: a second refund of one transaction is 23505');
SELECT throws_ok($$SELECT keen.refund_credits((SELECT id FROM keen.credit_transactions WHERE transaction_type = 'admin_bypass' LIMIT 1), 'no')$$,
                 '22023', NULL, 'refund_credits: an admin bypass cannot be refunded (22023)');
SELECT throws_ok($$SELECT keen.refund_credits((SELECT id FROM keen.credit_transactions WHERE idempotency_key = 'pi-1'), 'chargeback')$$,
                 'KN001', NULL, 'refund_credits: a purchase refund the available balance cannot cover is KN001');
SELECT throws_ok($$SELECT keen.refund_credits(gen_random_uuid(), 'what')$$, 'P0002', NULL,
                 'refund_credits: an unknown transaction is P0002');
SELECT keen.act_as(pg_temp.id('alice'));
SELECT throws_ok($$SELECT keen.refund_credits((SELECT id FROM keen.credit_transactions WHERE idempotency_key = 'pi-1'), 'mine')$$,
                 '42501', NULL, 'refund_credits: a non-admin is 42501');

-- verify_ledger -----------------------------------------------------------------------------
SELECT throws_ok($$SELECT * FROM keen.verify_ledger()$$, '42501', NULL, 'verify_ledger: a non-admin actor is 42501');
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT is((SELECT bool_and(ok) AND count(*) >= 3 FROM keen.verify_ledger()), true,
          'verify_ledger: every account balances for an admin');

-- the ledger is append-only -----------------------------------------------------------------
SELECT throws_ok($$UPDATE keen.credit_transactions SET amount = 0$$, '42501', NULL, 'the ledger refuses UPDATE, even to a superuser');
SELECT throws_ok($$DELETE FROM keen.credit_transactions$$, '42501', NULL, 'the ledger refuses DELETE, even to a superuser');
SET LOCAL client_min_messages = warning;  -- TRUNCATE ... CASCADE notices
SELECT throws_ok($$TRUNCATE keen.credit_transactions CASCADE$$, '42501', NULL, 'the ledger refuses TRUNCATE, even to a superuser');

-- auto-recharge requests --------------------------------------------------------------------
SELECT keen.act_as(pg_temp.id('bob'));
SELECT lives_ok($$SELECT keen.set_auto_recharge(pg_temp.id('bob'), true, 15, 40)$$, 'set_auto_recharge: the owner switches it on');
SELECT keen.deduct_credits(pg_temp.id('bob'), 1.2);    -- 20 -> 14: below 15
SELECT keen.deduct_credits(pg_temp.id('bob'), 1);      -- 14 -> 9: no second request
SELECT results_eq($$SELECT status::text, threshold::numeric, requested_amount::numeric, balance_at_request::numeric
                      FROM keen.recharge_requests()$$,
                  $$VALUES ('pending', 15::numeric, 40::numeric, 14::numeric)$$,
                  'recharge_requests: one pending request for the crossing, not one per call');
SELECT throws_ok($$SELECT keen.set_auto_recharge(pg_temp.id('bob'), NULL)$$, '22023', NULL,
                 'set_auto_recharge: NULL is 22023');
SELECT throws_ok($$SELECT keen.set_auto_recharge(pg_temp.id('alice'), true)$$, '42501', NULL,
                 'set_auto_recharge: another user''s account is 42501');
SELECT throws_ok($$SELECT * FROM keen.recharge_requests('paid')$$, '22023', NULL,
                 'recharge_requests: an unknown status is 22023');
SELECT throws_ok($$SELECT * FROM keen.resolve_recharge_request((SELECT id FROM keen.credit_recharge_requests), 'cancelled')$$,
                 '42501', NULL, 'resolve_recharge_request: a user is 42501');
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT is((SELECT status::text FROM keen.resolve_recharge_request((SELECT id FROM keen.credit_recharge_requests), 'cancelled', NULL, 'card expired')),
          'cancelled', 'resolve_recharge_request: an admin closes a pending request');
SELECT throws_ok($$SELECT * FROM keen.resolve_recharge_request((SELECT id FROM keen.credit_recharge_requests), 'failed')$$,
                 '22023', NULL, 'resolve_recharge_request: a request no longer pending is 22023');
SELECT throws_ok($$SELECT * FROM keen.resolve_recharge_request(gen_random_uuid(), 'failed')$$,
                 'P0002', NULL, 'resolve_recharge_request: an unknown request is P0002');
SELECT throws_ok($$SELECT keen.set_auto_recharge(pg_temp.id('nobody'), true)$$, 'P0002', NULL,
                 'set_auto_recharge: an unknown account is P0002');

-- Usage metering ----------------------------------------------------------------------------
SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT lives_ok($$SELECT keen.add_credits(pg_temp.id('bob'), 50, 'metering pack')$$, 'metering: bob gets 50 credits');
SELECT lives_ok($$SELECT keen.set_model_price('test-model', 2, 10, NULL, 0.5, '2025-01-01')$$,
                'set_model_price: an admin adds a dated price');
SELECT is((SELECT cache_write_usd_per_mtok FROM keen.model_prices WHERE model = 'test-model'), 2::numeric,
          'set_model_price: a NULL cache price is the input price');
SELECT throws_ok($$SELECT keen.set_model_price('test-model', 0.0000001, 1)$$, '22023', NULL,
                 'set_model_price: more than 6 decimals is 22023');
SELECT keen_private.set_actor(pg_temp.id('bob'));
SELECT throws_ok($$SELECT keen.set_model_price('test-model', 1, 1)$$, '42501', NULL, 'set_model_price: admin only');
SELECT results_eq($$SELECT claude_cost_usd, charged_credits FROM keen.record_llm_usage(pg_temp.id('bob_session'), 'test-model', 1000, 100, 0, 7, 'rq-1')$$,
                  $$VALUES (0.0030035::numeric, 0.015018::numeric)$$,
                  'record_llm_usage: (1000 x 2 + 100 x 10 + 7 x 0.5) / 10^6 USD, charged round(x 5, 6)');
SELECT is((SELECT current_balance FROM keen.credit_accounts WHERE user_id = pg_temp.id('bob')), 58.984982::keen.credit_amount,
          'record_llm_usage: charged at once (bob had 9 before the pack)');
-- Time-ordered ids (0022): version 7, the first 48 bits the Unix milliseconds when the row was
-- written (in this file's one transaction: after its start, before now).
CREATE FUNCTION pg_temp.is_v7_of_this_transaction(p_id uuid) RETURNS boolean LANGUAGE sql AS $$
SELECT pg_catalog.substr(p_id::text, 15, 1) = '7' AND pg_catalog.substr(p_id::text, 20, 1) IN ('8', '9', 'a', 'b')
   AND ('x' || pg_catalog.translate(pg_catalog.left(p_id::text, 13), '-', ''))::bit(48)::bigint
       BETWEEN pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.transaction_timestamp()) * 1000)::bigint
           AND pg_catalog.ceil(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint $$;
SELECT ok((SELECT pg_temp.is_v7_of_this_transaction(u.id) AND pg_temp.is_v7_of_this_transaction(t.id)
             FROM keen.llm_usage u JOIN keen.credit_transactions t ON t.id = u.transaction_id
            WHERE u.session_id = pg_temp.id('bob_session') AND u.request_id = 'rq-1'),
          'ledger_and_usage_ids_are_uuid_v7_of_their_moment: a metered call''s usage row and ledger row (0022)');
CREATE FUNCTION pg_temp.ids_sort_by_time() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_earlier uuid;
    v_later uuid;
BEGIN
    FOR i IN 1..20 LOOP
        v_earlier := keen_private.time_ordered_uuid();
        PERFORM pg_catalog.pg_sleep(0.002);
        v_later := keen_private.time_ordered_uuid();
        IF v_later <= v_earlier THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;
SELECT ok(pg_temp.ids_sort_by_time(), 'time_ordered_ids_made_later_sort_later: in 20 pairs made 2 ms apart the later id is greater');
SELECT is((SELECT count(DISTINCT keen_private.time_ordered_uuid()) FROM pg_catalog.generate_series(1, 20000)), 20000::bigint,
          'time_ordered_ids_are_unique: 20,000 made by one statement, many in the same millisecond, all differ');
SELECT throws_ok($$SELECT * FROM keen.record_llm_usage(pg_temp.id('bob_session'), 'test-model', 1000, 101, 0, 7, 'rq-1')$$,
                 'KN005', NULL, 'record_llm_usage: the same request id with other counts is KN005');
SELECT throws_ok($$SELECT * FROM keen.record_llm_usage(pg_temp.id('bob_session'), 'no-such-model', 1, 1)$$,
                 '22023', NULL, 'record_llm_usage: an unknown model is 22023');
SELECT keen_private.set_actor(pg_temp.id('alice'));
SELECT throws_ok($$SELECT * FROM keen.record_llm_usage(pg_temp.id('bob_session'), 'test-model', 1, 1)$$,
                 'P0002', NULL, 'record_llm_usage: another tenant''s session is P0002');

SELECT keen_private.set_actor(pg_temp.id('admin'));
SELECT is((SELECT bool_and(ok) FROM keen.verify_ledger()), true, 'the ledger still balances at the end');

-- keen_ledger (issue 17): BYPASSRLS for the ledger tables only, owner of the functions that
-- authorize explicitly, never a login.
SELECT ok((SELECT rolbypassrls AND NOT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = 'keen_ledger'),
          'keen_ledger bypasses row policies, cannot log in and is no superuser');
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY 1) FROM pg_proc p
            WHERE p.proowner = 'keen_ledger'::regrole
              AND p.proname NOT IN ('deduct_credits', 'reserve_credits', 'capture_reservation', 'release_reservation',
                                    'get_balance', 'validate_credits', 'credit_history', 'set_spending_limits',
                                    'set_auto_recharge', 'credit_charge', 'credit_charge_as_ledger', 'credit_replay', 'credit_live_holds',
                                    'credit_check_spend', 'credit_request_recharge', 'credit_refresh_holds',
                                    'credit_lock', 'credit_hold_replay', 'credit_hold_result',
                                    'record_llm_usage', 'llm_usage_replay', 'llm_usage_result')),
          NULL, 'keen_ledger owns only the reviewed ledger functions');
SELECT ok(NOT has_function_privilege('keen_owner', 'keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)', 'EXECUTE')
          AND has_function_privilege('keen_owner', 'keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)', 'EXECUTE')
          AND (SELECT prosecdef FROM pg_proc WHERE oid = 'keen_private.credit_charge_as_ledger(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)'::regprocedure)
          AND NOT (SELECT prosecdef FROM pg_proc WHERE oid = 'keen_private.credit_charge(uuid, numeric, numeric, numeric, uuid, text, text, uuid, jsonb)'::regprocedure),
          'keen_owner''s functions charge only through credit_charge_as_ledger, which runs the one locked path as keen_ledger');
SELECT is((SELECT array_agg(DISTINCT c.relname::text ORDER BY c.relname::text) FROM pg_class c
            WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
              AND (has_table_privilege('keen_ledger', c.oid, 'SELECT') OR has_table_privilege('keen_ledger', c.oid, 'INSERT')
                   OR has_table_privilege('keen_ledger', c.oid, 'UPDATE') OR has_table_privilege('keen_ledger', c.oid, 'DELETE'))),
          ARRAY['agent_sessions', 'credit_accounts', 'credit_recharge_requests', 'credit_reservations',
                'credit_transactions', 'llm_usage', 'model_prices', 'settings'],
          'keen_ledger reaches the ledger and metering tables (and reads settings and sessions), nothing else');
SELECT is((SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
            WHERE a.attrelid = 'keen.agent_sessions'::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND has_column_privilege('keen_ledger', a.attrelid, a.attnum, 'UPDATE')),
          ARRAY['claude_cost_usd', 'keen_cost_credits', 'last_activity_at'],
          'keen_ledger updates only a session''s running cost and activity (record_llm_usage, 0021)');
SELECT ok(NOT has_table_privilege('keen_ledger', 'keen.llm_usage', 'UPDATE')
          AND NOT has_any_column_privilege('keen_ledger', 'keen.model_prices', 'INSERT, UPDATE'),
          'keen_ledger appends usage rows and reads prices, nothing more');
SELECT is((SELECT array_agg(c.relname::text ORDER BY 1) FROM pg_class c
            WHERE c.relnamespace = 'keen'::regnamespace
              AND (has_table_privilege('keen_ledger', c.oid, 'DELETE') OR has_table_privilege('keen_ledger', c.oid, 'TRUNCATE')
                   OR (c.relname IN ('agent_sessions', 'settings', 'model_prices') AND (has_table_privilege('keen_ledger', c.oid, 'INSERT')
                                                                       OR has_table_privilege('keen_ledger', c.oid, 'UPDATE'))))),
          NULL, 'keen_ledger deletes nothing and only reads settings, prices and sessions');

-- Scopes: no scope covers the account's limits and auto-recharge (a spending key must not lift
-- the limits that bound it); the recharge queue is credits:read.
SELECT keen_private.set_actor_scoped(pg_temp.id('bob'), ARRAY['sessions:read']);
SELECT throws_ok($$SELECT keen.set_spending_limits(pg_temp.id('bob'), NULL, NULL)$$, '42501', NULL,
                 'set_spending_limits_needs_an_unscoped_actor: a sessions:read key cannot lift the limits');
SELECT throws_ok($$SELECT keen.set_auto_recharge(pg_temp.id('bob'), true, 1, 10)$$, '42501', NULL,
                 'set_auto_recharge_needs_an_unscoped_actor: a sessions:read key cannot switch auto-recharge');
SELECT throws_ok($$SELECT * FROM keen.recharge_requests()$$, '42501', NULL,
                 'recharge_requests_needs_credits_read: a sessions:read key cannot read the recharge queue');
SELECT keen_private.set_actor(NULL);

-- 0018 validated 0011's session cost CHECK (0015, which holds the ledger's ACCESS EXCLUSIVE
-- locks, no longer scans agent_sessions for it).
SELECT ok((SELECT c.convalidated FROM pg_catalog.pg_constraint c
            WHERE c.conrelid = 'keen.agent_sessions'::regclass AND c.conname = 'agent_sessions_claude_cost_usd_check'),
          'session_cost_check_is_validated_by_its_own_migration (0018)');

SELECT * FROM finish();
ROLLBACK;
