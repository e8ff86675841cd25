"""Typed one-row reads for the CLI's own queries (doctor, backup, bench): a query that must
return a row and did not is a bug, said as such, never a TypeError on None."""

from __future__ import annotations

from typing import Any

import psycopg


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> tuple[Any, ...]:
    """The single row of `query` (RuntimeError when there is none)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return tuple(row)


def value(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the single row of `query`."""
    return one(conn, query, params)[0]
