-- CREDIT_MARKUP_MULTIPLIER, when set, fixes the multiplier at seed time; when unset the
-- current value (5.0 by default, or what an admin chose) is kept.
UPDATE keen.settings s
   SET value = pg_catalog.to_jsonb(%(markup)s::numeric), updated_at = pg_catalog.now()
 WHERE s.key = 'markup_multiplier'
   AND %(markup)s::numeric IS NOT NULL
   AND s.value IS DISTINCT FROM pg_catalog.to_jsonb(%(markup)s::numeric);
