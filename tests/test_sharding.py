"""The sharding path (docs/scaling.md): a tenant's rows can live together on one shard only if
every foreign key between tenant tables carries user_id on both sides, so that the referenced
row is always on the referencing row's shard (what Citus needs to co-locate tables distributed
by user_id). Read from the catalog of a freshly migrated database."""

from __future__ import annotations

# A tenant table is a table of schema keen with a user_id column (keen.users is the tenant
# itself: its id is the distribution key; an FK to it is by user_id or by an actor id).
FOREIGN_KEYS_BETWEEN_TENANT_TABLES = """
SELECT c.conname, c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent,
       EXISTS (SELECT 1
                 FROM unnest(c.conkey, c.confkey) AS k(child_col, parent_col)
                 JOIN pg_catalog.pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = k.child_col
                 JOIN pg_catalog.pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.parent_col
                WHERE ca.attname = 'user_id' AND pa.attname = 'user_id') AS pairs_user_id
  FROM pg_catalog.pg_constraint c
 WHERE c.contype = 'f' AND c.connamespace = 'keen'::regnamespace
   AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = c.confrelid AND a.attname = 'user_id' AND NOT a.attisdropped)
 ORDER BY 2, 1
"""


def test_every_foreign_key_between_tenant_tables_includes_user_id(db) -> None:
    """Rule: every FK that references a tenant table maps the child's user_id to the parent's
    user_id (so a tenant's rows co-locate on one shard), and its child is a tenant table too."""
    with db.su() as conn:
        fks = conn.execute(FOREIGN_KEYS_BETWEEN_TENANT_TABLES).fetchall()
        tenant_tables = {
            r[0]
            for r in conn.execute("""
                SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped
                 WHERE c.relnamespace = 'keen'::regnamespace AND c.relkind IN ('r', 'p')""").fetchall()
        }
    assert len(fks) >= 10, "the ledger and session tables reference each other"
    assert [f"{child}.{name} -> {parent}" for name, child, parent, pairs in fks if not pairs] == []
    assert {child for _n, child, _p, _pairs in fks} <= tenant_tables
