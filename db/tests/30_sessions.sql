-- 30_sessions: every agent-session function, its success path and each of its error codes;
-- the tree trigger; completion charging through deduct_credits (the reference lifecycle, the
-- admin bypass, KN001 leaving the session unchanged).
-- Runs as the superuser postgres; after keen.act_as RLS applies as for that actor.
BEGIN;
SELECT plan(119);

SELECT set_config('tests.admin', (SELECT id FROM keen.users WHERE role = 'super_admin')::text, false);
SELECT set_config('tests.alice', (SELECT id FROM keen.register_user('alice@sessions.test', 'alice_s', 'alice password'))::text, false);
SELECT set_config('tests.bob', (SELECT id FROM keen.register_user('bob@sessions.test', 'bob_s', 'bob password'))::text, false);
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT lives_ok($$SELECT keen.add_credits(current_setting('tests.alice')::uuid, 25, 'pgtap purchase')$$,
                'the admin grants alice 25 credits');

-- structure ------------------------------------------------------------------------------------
SELECT is_definer('keen', f, f || ' is SECURITY DEFINER')
  FROM unnest(ARRAY['create_session', 'update_session_progress', 'complete_session', 'session_tree',
                    'cancel_session', 'list_sessions', 'record_tool_execution', 'record_git_operation',
                    'session_tree_summary', 'record_phase_transition', 'get_session']) AS f;
SELECT ok(pg_catalog.has_function_privilege('keen_app', 'keen.create_session(uuid, text, text, text, text, uuid, jsonb)', 'EXECUTE'),
          'keen_app may create sessions');
SELECT ok(NOT pg_catalog.has_function_privilege('keen_app', 'keen_private.lock_session(uuid, boolean)', 'EXECUTE'),
          'keen_app may not call the internal lock_session');
SELECT has_index('keen', 'agent_sessions', 'agent_sessions_tree_path_idx', 'the subtree index exists');
SELECT has_index('keen', 'agent_sessions', 'agent_sessions_tree_order_idx', 'the ordered whole-tree index exists');

-- create_session --------------------------------------------------------------------------------
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT set_config('tests.bob_root', (SELECT id FROM keen.create_session(current_setting('tests.bob')::uuid, 'shared-name', 'main', 'bob vision', '/b'))::text, false);

SELECT keen.act_as(current_setting('tests.alice')::uuid);
SELECT set_config('tests.root', (SELECT id FROM keen.create_session(current_setting('tests.alice')::uuid, 'root', 'main',
                                  'build it', '/repo', NULL, '{"execution_mode": "sequential"}'))::text, false);
SELECT results_eq($$SELECT session_depth, parent_session_id, root_session_id, is_admin_session, bypass_credit_deduction,
                           execution_status, current_phase, max_recursion_depth
                      FROM keen.get_session(current_setting('tests.root')::uuid)$$,
                  $$VALUES (0, NULL::uuid, current_setting('tests.root')::uuid, false, false, 'running'::varchar, 'EXPLORE'::varchar, 10)$$,
                  'create_session makes a running root at depth 0 with the default depth limit');
SELECT set_config('tests.child', (SELECT id FROM keen.create_session(current_setting('tests.alice')::uuid, 'child', 'agent/a',
                                   'part a', '/repo', current_setting('tests.root')::uuid))::text, false);
SELECT results_eq($$SELECT session_depth, parent_session_id, root_session_id FROM keen.get_session(current_setting('tests.child')::uuid)$$,
                  $$VALUES (1, current_setting('tests.root')::uuid, current_setting('tests.root')::uuid)$$,
                  'a child is one deeper than its parent, in its parent''s tree');
SELECT is((SELECT session_id::text FROM keen.create_session(current_setting('tests.alice')::uuid, 'shared-name', 'main', 'v', '/w')),
          'shared-name', 'a session id another user has is free for this one');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.bob')::uuid, 'x', 'main', 'v', '/w')$$,
                 '42501', NULL, 'creating a session for another user is 42501');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, '', 'main', 'v', '/w')$$,
                 '22023', NULL, 'a blank session id is 22023');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', NULL, '[]')$$,
                 '22023', NULL, 'agent_options that are not an object are 22023');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', NULL, '{"max_depth": 51}')$$,
                 '22023', NULL, 'a max_depth above hard_max_session_depth is 22023');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', NULL, '{"execution_mode": "later"}')$$,
                 '22023', NULL, 'an unknown execution_mode is 22023');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', pg_catalog.gen_random_uuid())$$,
                 'P0002', NULL, 'an absent parent is P0002');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', current_setting('tests.bob_root')::uuid)$$,
                 'P0002', NULL, 'another user''s parent is P0002, as if absent');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', current_setting('tests.root')::uuid)$$,
                 'KN004', NULL, 'a sequential parent with a running child refuses a second one (KN004)');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'root', 'main', 'v', '/w')$$,
                 '23505', NULL, 'a session id the user already has is 23505');
SELECT set_config('tests.flat', (SELECT id FROM keen.create_session(current_setting('tests.alice')::uuid, 'flat', 'main',
                                  'v', '/w', NULL, '{"max_depth": 0}'))::text, false);
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', current_setting('tests.flat')::uuid)$$,
                 'KN004', NULL, 'a child past the maximum depth is KN004');
SELECT lives_ok($$SELECT keen.complete_session(current_setting('tests.flat')::uuid, true)$$, 'a session without cost completes');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.alice')::uuid, 'x', 'main', 'v', '/w', current_setting('tests.flat')::uuid)$$,
                 'KN004', NULL, 'a parent that is not running is KN004');
SELECT is((SELECT count(*) FROM keen.agent_sessions WHERE session_id = 'x'), 0::bigint, 'refused creations write nothing');

-- the tree trigger ------------------------------------------------------------------------------
SELECT is((SELECT pg_catalog.length(tree_path) FROM keen.agent_sessions WHERE id = current_setting('tests.child')::uuid), 34,
          'tree_path holds 17 bytes a level');
SELECT throws_ok($$UPDATE keen.agent_sessions SET parent_session_id = NULL WHERE id = current_setting('tests.child')::uuid$$,
                 '22023', NULL, 'a session''s place in its tree cannot change');
SELECT throws_ok($$INSERT INTO keen.agent_sessions (user_id, session_id, parent_session_id, git_branch, vision, working_directory)
                   VALUES (current_setting('tests.alice')::uuid, 'y', current_setting('tests.bob_root')::uuid, 'main', 'v', '/w')$$,
                 '23503', NULL, 'a direct insert under another user''s session is refused by the trigger');

-- get_session -----------------------------------------------------------------------------------
SELECT is((SELECT session_id::text FROM keen.get_session(current_setting('tests.root')::uuid)), 'root', 'get_session returns an own session');
SELECT throws_ok($$SELECT keen.get_session(current_setting('tests.bob_root')::uuid)$$, 'P0002', NULL,
                 'get_session of another user''s session is P0002');

-- update_session_progress and record_phase_transition -------------------------------------------
SELECT results_eq($$SELECT current_phase, iteration_count, tokens_used, context_tokens_used
                      FROM keen.update_session_progress(current_setting('tests.root')::uuid, 'PLAN', 3, NULL, 1500, 9000)$$,
                  $$VALUES ('PLAN'::varchar, 3, 1500::bigint, 9000::bigint)$$, 'update_session_progress changes phase and counters');
SELECT results_eq($$SELECT from_phase, to_phase, duration_ms >= 0 FROM keen.phase_transitions
                     WHERE session_id = current_setting('tests.root')::uuid$$,
                  $$VALUES ('EXPLORE'::varchar, 'PLAN'::varchar, true)$$, 'a phase change writes one phase_transitions row');
SELECT lives_ok($$SELECT keen.update_session_progress(current_setting('tests.root')::uuid, 'PLAN', p_tool_calls_count => 2)$$,
                'the current phase may be reported again');
SELECT is((SELECT count(*) FROM keen.phase_transitions p WHERE p.session_id = current_setting('tests.root')::uuid), 1::bigint,
          'reporting the current phase again writes no transition');
SELECT throws_ok($$SELECT keen.update_session_progress(current_setting('tests.root')::uuid, 'DEPLOY')$$, '22023', NULL,
                 'an unknown phase is 22023');
SELECT throws_ok($$SELECT keen.update_session_progress(current_setting('tests.root')::uuid, p_tokens_used => -1)$$, '22023', NULL,
                 'a negative counter is 22023');
SELECT throws_ok($$SELECT keen.update_session_progress(current_setting('tests.bob_root')::uuid, 'PLAN')$$, 'P0002', NULL,
                 'progress on another user''s session is P0002');
SELECT throws_ok($$SELECT keen.update_session_progress(current_setting('tests.flat')::uuid, 'PLAN')$$, 'KN004', NULL,
                 'progress on a finished session is KN004');
SELECT results_eq($$SELECT from_phase, to_phase, summary, confidence FROM keen.record_phase_transition(current_setting('tests.root')::uuid,
                      'FOUND', 'plan done', ARRAY['finding'], ARRAY['next'], 0.9, '5 minutes', '{"step": 1}')$$,
                  $$VALUES ('PLAN'::varchar, 'FOUND'::varchar, 'plan done'::text, 0.90::numeric(3,2))$$,
                  'record_phase_transition writes the phase report');
SELECT throws_ok($$SELECT keen.record_phase_transition(current_setting('tests.root')::uuid, 'FOUND')$$, 'KN004', NULL,
                 'a transition to the current phase is KN004');
SELECT throws_ok($$SELECT keen.record_phase_transition(current_setting('tests.root')::uuid, 'SUMMON', p_confidence => 2)$$, '22023', NULL,
                 'a confidence above 1 is 22023');
SELECT throws_ok($$SELECT keen.record_phase_transition(current_setting('tests.root')::uuid, 'later')$$, '22023', NULL,
                 'a transition to an unknown phase is 22023');
SELECT throws_ok($$SELECT keen.record_phase_transition(current_setting('tests.bob_root')::uuid, 'PLAN')$$, 'P0002', NULL,
                 'a transition of another user''s session is P0002');

-- record_tool_execution and record_git_operation ------------------------------------------------
SELECT results_eq($$SELECT tool_name::text, success, cost FROM keen.record_tool_execution(current_setting('tests.child')::uuid,
                      'read_file', 15, true, '{"path": "a.py"}', NULL, NULL, 20, 0.001)$$,
                  $$VALUES ('read_file'::text, true, 0.001::keen.credit_amount)$$, 'record_tool_execution records a tool call');
SELECT is((SELECT tool_calls_count FROM keen.get_session(current_setting('tests.child')::uuid)), 1,
          'a recorded tool call counts on the session');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.child')::uuid, '', 1, true)$$, '22023', NULL,
                 'a blank tool name is 22023');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.child')::uuid, 'x', -1, true)$$, '22023', NULL,
                 'a negative execution time is 22023');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.bob_root')::uuid, 'x', 1, true)$$, 'P0002', NULL,
                 'a tool call on another user''s session is P0002');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.flat')::uuid, 'x', 1, true)$$, 'KN004', NULL,
                 'a tool call on a finished session is KN004');
SELECT results_eq($$SELECT operation_type::text, commit_hash::text, lines_added FROM keen.record_git_operation(current_setting('tests.child')::uuid,
                      'commit', 'agent/a', true, 'ABC1234', 'feat: a', ARRAY['a.py'], 7, 1)$$,
                  $$VALUES ('commit'::text, 'abc1234'::text, 7)$$, 'record_git_operation records a commit (hash in lower case)');
SELECT throws_ok($$SELECT keen.record_git_operation(current_setting('tests.child')::uuid, 'force-push', 'main', true)$$, '22023', NULL,
                 'an unknown git operation is 22023');
SELECT throws_ok($$SELECT keen.record_git_operation(current_setting('tests.child')::uuid, 'commit', 'main', true, 'xyz')$$, '22023', NULL,
                 'a commit hash that is not hex is 22023');
SELECT throws_ok($$SELECT keen.record_git_operation(current_setting('tests.bob_root')::uuid, 'commit', 'main', true)$$, 'P0002', NULL,
                 'a git operation on another user''s session is P0002');
SELECT throws_ok($$SELECT keen.record_git_operation(current_setting('tests.flat')::uuid, 'commit', 'main', true)$$, 'KN004', NULL,
                 'a git operation on a finished session is KN004');

-- session_tree and session_tree_summary ---------------------------------------------------------
SELECT set_config('tests.grandchild', (SELECT id FROM keen.create_session(current_setting('tests.alice')::uuid, 'grandchild', 'agent/a/1',
                                        'part a1', '/repo', current_setting('tests.child')::uuid))::text, false);
SELECT results_eq($$SELECT session_id, session_depth FROM keen.session_tree(current_setting('tests.root')::uuid)$$,
                  $$VALUES ('root'::text, 0), ('child'::text, 1), ('grandchild'::text, 2)$$,
                  'session_tree returns the whole tree by depth');
SELECT results_eq($$SELECT session_id FROM keen.session_tree(current_setting('tests.child')::uuid)$$,
                  $$VALUES ('child'::text), ('grandchild'::text)$$, 'session_tree of a child is its subtree');
SELECT throws_ok($$SELECT * FROM keen.session_tree(current_setting('tests.bob_root')::uuid)$$, 'P0002', NULL,
                 'the tree of another user''s session is P0002');
SELECT throws_ok($$SELECT * FROM keen.session_tree(pg_catalog.gen_random_uuid())$$, 'P0002', NULL,
                 'the tree of an absent session is P0002');
SELECT results_eq($$SELECT session_count, max_depth, levels, running_count FROM keen.session_tree_summary(current_setting('tests.root')::uuid)$$,
                  $$VALUES (3::bigint, 2, 3, 3::bigint)$$, 'session_tree_summary counts the tree');
SELECT throws_ok($$SELECT * FROM keen.session_tree_summary(current_setting('tests.bob_root')::uuid)$$, 'P0002', NULL,
                 'the summary of another user''s session is P0002');

-- complete_session ------------------------------------------------------------------------------
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.child')::uuid, NULL)$$, '22023', NULL,
                 'a completion without success or failure is 22023');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.child')::uuid, true, -1)$$, '22023', NULL,
                 'a negative cost is 22023');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.child')::uuid, true, 'NaN')$$, '22023', NULL,
                 'a NaN cost is 22023');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.bob_root')::uuid, true, 1)$$, 'P0002', NULL,
                 'completing another user''s session is P0002');
-- The reference lifecycle: 25 credits, a session that cost 3.75 USD: 18.75 charged, 6.25 left.
SELECT results_eq($$SELECT execution_status, success, claude_cost_usd, keen_cost_credits, files_created
                      FROM keen.complete_session(current_setting('tests.grandchild')::uuid, true, 3.75, ARRAY['src/test.ts'],
                                                 p_completion_report => '{"summary": "done"}')$$,
                  $$VALUES ('completed'::varchar, true, 3.75::numeric, 18.75::keen.credit_amount, ARRAY['src/test.ts'])$$,
                  'complete_session ends the session and records its cost');
SELECT is((SELECT current_balance FROM keen.credit_accounts WHERE user_id = current_setting('tests.alice')::uuid), 6.25::keen.credit_amount,
          'the reference lifecycle leaves 6.25 credits of 25');
SELECT results_eq($$SELECT transaction_type, amount, claude_cost_usd, idempotency_key FROM keen.credit_transactions
                     WHERE session_id = current_setting('tests.grandchild')::uuid$$,
                  $$VALUES ('usage'::varchar, (-18.75)::keen.credit_amount, 3.75::numeric,
                            'session-complete:' || current_setting('tests.grandchild'))$$,
                  'the charge is one usage row keyed by the session');
SELECT is((SELECT to_phase FROM keen.phase_transitions WHERE session_id = current_setting('tests.grandchild')::uuid), 'COMPLETE'::varchar,
          'a successful session enters the COMPLETE phase');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.grandchild')::uuid, true, 3.75)$$, 'KN004', NULL,
                 'completing twice is KN004');
SELECT set_config('tests.before', (SELECT pg_catalog.row_to_json(s)::text FROM keen.agent_sessions s
                                    WHERE s.id = current_setting('tests.child')::uuid), false);
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.child')::uuid, true, 10, ARRAY['x'])$$, 'KN001', NULL,
                 'a completion the balance cannot pay is KN001');
SELECT is((SELECT pg_catalog.row_to_json(s)::text FROM keen.agent_sessions s WHERE s.id = current_setting('tests.child')::uuid),
          current_setting('tests.before'), 'KN001 leaves the session running and unchanged');
SELECT is((SELECT current_balance FROM keen.credit_accounts WHERE user_id = current_setting('tests.alice')::uuid), 6.25::keen.credit_amount,
          'KN001 charges nothing');
SELECT results_eq($$SELECT execution_status, success, error_message, keen_cost_credits, current_phase
                      FROM keen.complete_session(current_setting('tests.child')::uuid, false, 0.25, p_error_message => 'tests failed')$$,
                  $$VALUES ('failed'::varchar, false, 'tests failed'::text, 1.25::keen.credit_amount, 'EXPLORE'::varchar)$$,
                  'a failed session pays for its cost and keeps its phase');
SELECT results_eq($$SELECT own_keen_cost_credits, subtree_keen_cost_credits, subtree_claude_cost_usd, completed_count, failed_count
                      FROM keen.session_tree_summary(current_setting('tests.root')::uuid)$$,
                  $$VALUES (0::numeric, 20.00::numeric, 4.00::numeric, 1::bigint, 1::bigint)$$,
                  'the summary sets the root''s own cost against its subtree''s');

-- cancel_session --------------------------------------------------------------------------------
SELECT set_config('tests.second', (SELECT id FROM keen.create_session(current_setting('tests.alice')::uuid, 'second', 'agent/b',
                                    'part b', '/repo', current_setting('tests.root')::uuid))::text, false);
SELECT results_eq($$SELECT session_id, execution_status, error_message FROM keen.cancel_session(current_setting('tests.root')::uuid, 'stop')$$,
                  $$VALUES ('root'::varchar, 'cancelled'::varchar, 'stop'::text), ('second'::varchar, 'cancelled'::varchar, 'stop'::text)$$,
                  'cancel_session cancels the session and its running descendants only');
SELECT throws_ok($$SELECT keen.cancel_session(current_setting('tests.root')::uuid, 'again')$$, 'KN004', NULL,
                 'cancelling a finished session is KN004');
SELECT throws_ok($$SELECT keen.cancel_session(current_setting('tests.bob_root')::uuid, 'x')$$, 'P0002', NULL,
                 'cancelling another user''s session is P0002');
SELECT is((SELECT current_balance FROM keen.credit_accounts WHERE user_id = current_setting('tests.alice')::uuid), 5.00::keen.credit_amount,
          'cancelling charges nothing');

-- list_sessions ---------------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM keen.list_sessions()), 6::bigint, 'list_sessions shows the actor''s own sessions');
SELECT is((SELECT count(*) FROM keen.list_sessions(100, 0, 'cancelled')), 2::bigint, 'list_sessions filters by status');
SELECT is((SELECT count(*) FROM keen.list_sessions(2, 1)), 2::bigint, 'list_sessions pages');
SELECT throws_ok($$SELECT keen.list_sessions(0)$$, '22023', NULL, 'a limit of 0 is 22023');
SELECT throws_ok($$SELECT keen.list_sessions(10, -1)$$, '22023', NULL, 'a negative offset is 22023');
SELECT throws_ok($$SELECT keen.list_sessions(10, 0, 'paused')$$, '22023', NULL, 'an unknown status is 22023');

-- the admin -------------------------------------------------------------------------------------
SELECT keen_private.set_actor(current_setting('tests.admin')::uuid);
SELECT is((SELECT count(*) FROM keen.list_sessions() WHERE user_id IN (current_setting('tests.alice')::uuid, current_setting('tests.bob')::uuid)),
          7::bigint, 'the admin lists every user''s sessions');
SELECT is((SELECT count(*) FROM keen.session_tree(current_setting('tests.bob_root')::uuid)), 1::bigint, 'the admin reads any tree');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.bob')::uuid, 'x', 'main', 'v', '/w', current_setting('tests.root')::uuid)$$,
                 'P0002', NULL, 'even for the admin, a parent of another user is P0002');
SELECT set_config('tests.admin_s', (SELECT id FROM keen.create_session(current_setting('tests.admin')::uuid, 'admin_session_123', 'main',
                                     'Admin test execution', '/tmp/admin_test'))::text, false);
SELECT results_eq($$SELECT is_admin_session, bypass_credit_deduction FROM keen.get_session(current_setting('tests.admin_s')::uuid)$$,
                  $$VALUES (true, true)$$, 'the admin''s session is an admin session that bypasses billing');
SELECT results_eq($$SELECT claude_cost_usd, keen_cost_credits FROM keen.complete_session(current_setting('tests.admin_s')::uuid, true, 50.00)$$,
                  $$VALUES (50::numeric, 0::keen.credit_amount)$$,
                  'the admin''s 50 USD session records its cost and charges nothing');
SELECT results_eq($$SELECT transaction_type, amount, claude_cost_usd, is_admin_bypass FROM keen.credit_transactions
                     WHERE session_id = current_setting('tests.admin_s')::uuid$$,
                  $$VALUES ('admin_bypass'::varchar, 0::keen.credit_amount, 50::numeric, true)$$,
                  'the admin''s completion is an admin_bypass row of amount 0');
SELECT is((SELECT count(*) FROM keen.verify_ledger() WHERE NOT ok), 0::bigint, 'the ledger balances after every completion');

-- the functions emit their own events (issue 13) ----------------------------------------------
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT set_config('tests.bob_s2', (SELECT id FROM keen.create_session(current_setting('tests.bob')::uuid, 'emits', 'main', 'v', '/w'))::text, false);
SELECT lives_ok($$SELECT keen.update_session_progress(current_setting('tests.bob_s2')::uuid, 'EXPLORE', 1)$$, 'progress, same phase');
SELECT lives_ok($$SELECT keen.update_session_progress(current_setting('tests.bob_s2')::uuid, 'PLAN', 2)$$, 'progress, a phase change');
SELECT lives_ok($$SELECT keen.record_tool_execution(current_setting('tests.bob_s2')::uuid, 'grep', 3, true, '{"secret": "sk-1"}')$$,
                'a tool call');
SELECT lives_ok($$SELECT keen.record_git_operation(current_setting('tests.bob_s2')::uuid, 'commit', 'main', true, 'abcdef1')$$,
                'a git operation');
SELECT lives_ok($$SELECT keen.cancel_session(current_setting('tests.bob_s2')::uuid, 'stop')$$, 'a cancel');
SELECT is((SELECT array_agg(event_type || '/' || event_source ORDER BY event_id)
             FROM keen.events_since(current_setting('tests.bob_s2')::uuid)),
          ARRAY['phase_change/agent', 'tool_execution/tool', 'git_operation/git', 'session_cancelled/system'],
          'phase_change (only for a change of phase), tool_execution, git_operation and session_cancelled are emitted by the functions themselves');
SELECT ok(NOT EXISTS (SELECT 1 FROM keen.streaming_events WHERE event_data::text LIKE '%sk-1%'),
          'a tool''s parameters never reach the stream');
SELECT is((SELECT array_agg(event_type::text ORDER BY event_id) FROM keen.streaming_events
            WHERE session_id = current_setting('tests.admin_s')::uuid),
          ARRAY['credits_charged', 'phase_change', 'session_completed'],
          'complete_session emitted credits_charged, phase_change and session_completed');

-- size caps (issue 16) --------------------------------------------------------------------------
SELECT set_config('tests.bob_s3', (SELECT id FROM keen.create_session(current_setting('tests.bob')::uuid, 'caps', 'main', 'v', '/w'))::text, false);
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.bob')::uuid, 'big', 'main', repeat('v', 16385), '/w')$$,
                 '22023', NULL, 'a vision over 16 KiB is 22023');
SELECT throws_ok($$SELECT keen.create_session(current_setting('tests.bob')::uuid, 'big', 'main', 'v', repeat('w', 4097))$$,
                 '22023', NULL, 'a working directory over 4 KiB is 22023');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.bob_s3')::uuid, 'grep', 3, true,
                                                    jsonb_build_object('p', repeat('x', 65537)))$$,
                 '22023', NULL, 'tool parameters over 64 KiB are 22023');
SELECT throws_ok($$SELECT keen.record_tool_execution(current_setting('tests.bob_s3')::uuid, 'grep', 3, true, '{}',
                                                    jsonb_build_object('r', repeat('x', 262145)))$$,
                 '22023', NULL, 'a tool result over 256 KiB is 22023');
SELECT throws_ok($$SELECT keen.record_git_operation(current_setting('tests.bob_s3')::uuid, 'commit', 'main', true, NULL,
                                                   repeat('m', 16385))$$,
                 '22023', NULL, 'git details over 16 KiB are 22023');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.bob_s3')::uuid, false, 0, '{}', '{}', '{}', repeat('e', 16385))$$,
                 '22023', NULL, 'an error message over 16 KiB is 22023');
SELECT throws_ok($$SELECT keen.complete_session(current_setting('tests.bob_s3')::uuid, true, 0, '{}', '{}', '{}', NULL,
                                               jsonb_build_object('r', repeat('x', 262145)))$$,
                 '22023', NULL, 'a completion report over 256 KiB is 22023');
SELECT is((SELECT count(*) FROM keen.events_since(current_setting('tests.bob_s3')::uuid)), 0::bigint,
          'refused calls emitted nothing');

-- Scopes ---------------------------------------------------------------------------------------
SELECT keen_private.set_actor_scoped(current_setting('tests.bob')::uuid, ARRAY['sessions:read']);
SELECT throws_ok($$SELECT keen.record_phase_transition(current_setting('tests.bob_root')::uuid, 'FOUND')$$, '42501', NULL,
                 'record_phase_transition_needs_sessions_write: a sessions:read key cannot move a phase');
SELECT keen_private.set_actor_scoped(current_setting('tests.bob')::uuid, ARRAY['credits:read']);
SELECT throws_ok($$SELECT * FROM keen.session_tree_summary(current_setting('tests.bob_root')::uuid)$$, '42501', NULL,
                 'session_tree_summary_needs_sessions_read: a credits:read key cannot read the tree');
SELECT keen_private.set_actor(NULL);

-- keen_app ------------------------------------------------------------------------------------
SET LOCAL ROLE keen_app;
SELECT keen.act_as(current_setting('tests.bob')::uuid);
SELECT lives_ok($$SELECT keen.update_session_progress(current_setting('tests.bob_root')::uuid, 'SUMMON')$$,
                'keen_app reports progress through the function');
SELECT throws_ok($$UPDATE keen.agent_sessions SET current_phase = 'PLAN'$$, '42501', NULL, 'keen_app cannot write agent_sessions itself');
SELECT is((SELECT count(*) FROM keen.agent_sessions), 3::bigint, 'keen_app as bob reads bob''s three sessions only');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
