-- 00_core: the actor functions, settings, roles and the structure every area stands on.
BEGIN;
SELECT plan(26);

SELECT has_schema('keen');
SELECT has_role('keen_owner');
SELECT has_role('keen_app');
SELECT has_role('keen_maintenance');
SELECT ok(NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'keen_owner'), 'keen_owner cannot log in');
SELECT ok((SELECT rolcanlogin FROM pg_roles WHERE rolname = 'keen_app'), 'keen_app can log in');
SELECT is_definer('keen', 'act_as', ARRAY['uuid'], 'act_as is SECURITY DEFINER');
SELECT is_definer('keen', 'actor_is_admin', ARRAY[]::text[], 'actor_is_admin is SECURITY DEFINER');

SELECT is(keen.actor_id(), NULL, 'no actor before act_as');
SELECT set_config('keen.actor_id', '', true);
SELECT is(keen.actor_id(), NULL, 'an empty (stale) setting reads as no actor');

SELECT throws_ok($$SELECT keen.act_as('00000000-0000-0000-0000-000000000000')$$, '28000',
                 'no active user to act as', 'act_as an unknown user is 28000');
SELECT throws_ok($$SELECT keen.act_as(NULL)$$, '28000', NULL, 'act_as NULL is 28000');

SELECT throws_ok($$SELECT keen.act_as((SELECT id FROM keen.users WHERE role = 'super_admin'))$$, '42501',
                 'an admin acts only through a credential', 'act_as refuses an admin (42501)');
SELECT is(keen.actor_id(), NULL, 'and leaves no actor');
SELECT set_config('tests.carol', (SELECT id FROM keen.register_user('carol@core.test', 'carol_core', 'carol password'))::text, false);
SELECT keen.act_as(current_setting('tests.carol')::uuid);
SELECT is(keen.actor_id(), current_setting('tests.carol')::uuid, 'act_as sets the actor');
SELECT ok(NOT keen.actor_is_admin(), 'a registered user is no admin');
-- The superuser running this file may set any actor directly (no login role may).
SELECT keen_private.set_actor((SELECT id FROM keen.users WHERE role = 'super_admin'));
SELECT ok(keen.actor_is_admin(), 'the seeded super-admin is admin');

-- require_scope: the one scope check; the list is bound to the actor proof.
SELECT lives_ok($$SELECT keen_private.require_scope('credits:write')$$, 'an unscoped actor passes every scope');
SELECT keen_private.set_actor_scoped(current_setting('tests.carol')::uuid, ARRAY['credits:read']);
SELECT lives_ok($$SELECT keen_private.require_scope('credits:read')$$, 'a scoped actor passes its scope');
SELECT throws_ok($$SELECT keen_private.require_scope('credits:write')$$, '42501', NULL, 'and no other (42501)');
SELECT set_config('keen_private.actor_scopes', '', true);
SELECT is(keen.actor_id(), NULL, 'dropping the scope list by hand leaves no actor');

-- saved_scopes / restore_actor: the one way a function puts back the actor it replaced.
SELECT keen_private.set_actor_scoped(current_setting('tests.carol')::uuid, ARRAY['credits:read', 'sessions:read']);
SELECT set_config('tests.saved_scopes', keen_private.saved_scopes(), false);
SELECT keen_private.set_actor(NULL);
SELECT keen_private.restore_actor(current_setting('tests.carol')::uuid, current_setting('tests.saved_scopes'));
SELECT is(keen.actor_id(), current_setting('tests.carol')::uuid, 'restore_actor puts the saved actor back');
SELECT throws_ok($$SELECT keen_private.require_scope('credits:write')$$, '42501', NULL,
                 'with its saved scopes: a scoped actor restored is still scoped');
SELECT keen_private.restore_actor(NULL, '');
SELECT is(keen.actor_id(), NULL, 'restore_actor(NULL) leaves no actor');

SELECT is(keen.setting_numeric('markup_multiplier'), 5.0, 'markup multiplier defaults to 5.0');
SELECT throws_ok($$SELECT keen.setting_numeric('no_such_setting')$$, '22023', NULL, 'unknown setting is 22023');

SELECT * FROM finish();
ROLLBACK;
