"""keen-db bench, the identity figures (issue 11), in interleaved rounds on the bench database:
  * keen.authenticate_api_key of one key with its rate limit counted (1,000,000 per hour, never
    reached) against the same user's key with bypass_limits (not counted), one client: the
    counted key's calls take turns on its row by design (exactness), so more clients of one key
    measure the queue, not the work;
  * keen.authenticate_access_token (JWT HS256 check and the login session look-up) against
    keen.act_as (the bare actor proof), one client and b.cfg.clients clients.
Same server, same run; ratios are medians of per-round ratios."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

import psycopg

GOALS: list[tuple[str, str, str, Callable[[float], bool]]] = [
    (
        "ratio_api_key_limited_vs_unlimited",
        "authenticate_api_key with the rate limit counted / without (same user, limit not reached, 1 client)",
        ">= 0.8",
        lambda v: v >= 0.8,
    ),
    (
        "ratio_access_token_vs_act_as",
        "authenticate_access_token / act_as (1 client)",
        ">= 0.5",
        lambda v: v >= 0.5,
    ),
]

EMAIL = "bench-signin@example.com"
PASSWORD = "bench sign-in password"
SCRIPTS = {
    "api_key_limited": "SELECT user_id FROM keen.authenticate_api_key(:limited);\n",
    "api_key_unlimited": "SELECT user_id FROM keen.authenticate_api_key(:unlimited);\n",
    "access_token": "SELECT user_id FROM keen.authenticate_access_token(:access);\n",
    "act_as": "SELECT keen.act_as(:uid);\n",
}


def _row(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def _access_token(app: str) -> str:
    with psycopg.connect(app) as conn:
        row = conn.execute("SELECT access_token FROM keen.start_login_session(%s, %s)", (EMAIL, PASSWORD)).fetchone()
    assert row is not None
    return str(row[0])


def measure(b: Any) -> None:
    """Run on a keen_db.bench.Bench after its throughput rounds; adds the four TPS figures (1
    client and b.cfg.clients clients) and the two ratios to b.results."""
    app = b.s.role_url("keen_app", b.db)
    with b.su() as conn:
        if (
            conn.execute("SELECT pg_catalog.to_regprocedure('keen.authenticate_access_token(text)')").fetchone()[0]
            is None
        ):
            b.skipped["auth"] = "no login sessions yet"
            return
    with psycopg.connect(app) as app_conn:
        uid = _row(app_conn, "SELECT id FROM keen.register_user(%s, 'bench_signin', %s)", (EMAIL, PASSWORD))[0]
        app_conn.commit()
        app_conn.execute("SELECT keen.act_as(%s)", (uid,))
        limited = _row(app_conn, "SELECT token FROM keen.create_api_key('bench: counted', '{}', NULL, 1000000)")[0]
        unlimited_id, unlimited = _row(
            app_conn, "SELECT token_id, token FROM keen.create_api_key('bench: not counted', '{}', NULL, 1000000)"
        )
        app_conn.commit()
    with b.su() as conn:  # what the admin's keys have (bypass_rate_limits), for the same user's key
        conn.execute("UPDATE keen.auth_tokens SET bypass_limits = true WHERE id = %s", (unlimited_id,))
    for name, script in SCRIPTS.items():
        (b.tmp / f"auth_{name}.sql").write_text(script)
    samples: dict[str, list[float]] = {}
    d = b.cfg.seconds
    for i in range(b.cfg.rounds):
        b.echo(f"identity: API keys, access tokens, act_as {i + 1}/{b.cfg.rounds}")
        access = _access_token(app)  # 15 minutes: a fresh one each round
        variables = [
            "-D",
            f"limited={limited}",
            "-D",
            f"unlimited={unlimited}",
            "-D",
            f"access={access}",
            "-D",
            f"uid={uid}",
        ]
        names = list(SCRIPTS) if i % 2 == 0 else list(reversed(SCRIPTS))
        for clients in (1, b.cfg.clients):
            for name in names:
                if clients > 1 and name == "api_key_limited":
                    continue  # one key's counted calls queue on its row by design
                key = f"{name}_tps_c{clients}"
                samples.setdefault(key, []).append(
                    b._pgbench(app, ["-f", str(b.tmp / f"auth_{name}.sql"), *variables], d, clients)
                )

    def ratio(a: str, base: str) -> float | None:
        pairs = [x / y for x, y in zip(samples.get(a, []), samples.get(base, []), strict=False) if y]
        return round(statistics.median(pairs), 3) if pairs else None

    for key, values in samples.items():
        b.results[key] = round(statistics.median(values), 1)
    b.results["ratio_api_key_limited_vs_unlimited"] = ratio("api_key_limited_tps_c1", "api_key_unlimited_tps_c1")
    b.results["ratio_access_token_vs_act_as"] = ratio("access_token_tps_c1", "act_as_tps_c1")
    c = b.cfg.clients
    b.results[f"ratio_access_token_vs_act_as_c{c}"] = ratio(f"access_token_tps_c{c}", f"act_as_tps_c{c}")


def standalone(url: str | None = None, seconds: int = 5, rounds: int = 3) -> dict[str, Any]:
    """The same figures without the whole bench: `python -m keen_db.bench_auth` against a fresh
    database of the embedded cluster (docs/security.md quotes one run)."""
    import tempfile
    from pathlib import Path

    from . import bench, config, deploy

    s = config.load()
    name = "keen_bench_auth"
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    deploy.deploy(s, name)

    from types import SimpleNamespace

    m: Any = SimpleNamespace(results={}, skipped={}, failures=0, s=s, db=name, echo=print, tmp=Path(tempfile.mkdtemp()))
    m.cfg = bench.Config(seconds=seconds, rounds=rounds, clients=8)
    m.su = lambda: psycopg.connect(s.superuser_url(name), autocommit=True)
    m._pgbench = lambda conninfo, args, d, c: bench.Bench._pgbench(m, conninfo, args, d, c)
    try:
        measure(m)
    finally:
        with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return m.results


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(standalone(os.environ.get("KEEN_DATABASE_URL"))))
