"""db/schema.sql is the migrated schema as one file: generated, never hand-edited, never stale."""

from __future__ import annotations

from keen_db import schema_file


def test_db_schema_sql_is_what_the_migrations_build(settings, template_db):
    built = schema_file.dump(settings.superuser_url(template_db))
    assert schema_file.SCHEMA_FILE.read_text() == built, "db/schema.sql is stale: run `make schema`"


def test_db_schema_sql_leaves_out_functions_policies_and_dated_partitions():
    text = schema_file.SCHEMA_FILE.read_text()
    assert "CREATE TABLE keen.credit_transactions" in text
    assert "CREATE FUNCTION" not in text and "CREATE POLICY" not in text
    assert "streaming_events_y2" not in text
