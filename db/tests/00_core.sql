-- 00_core: the actor functions, settings, roles and the structure every area stands on.
BEGIN;
SELECT plan(16);

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

SELECT keen.act_as((SELECT id FROM keen.users WHERE role = 'super_admin'));
SELECT is(keen.actor_id(), (SELECT id FROM keen.users WHERE role = 'super_admin'), 'act_as sets the actor');
SELECT ok(keen.actor_is_admin(), 'the seeded super-admin is admin');

SELECT is(keen.setting_numeric('markup_multiplier'), 5.0, 'markup multiplier defaults to 5.0');
SELECT throws_ok($$SELECT keen.setting_numeric('no_such_setting')$$, '22023', NULL, 'unknown setting is 22023');

SELECT * FROM finish();
ROLLBACK;
