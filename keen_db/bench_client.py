"""keen-db bench, the client's deployment figures (issue 14), in interleaved rounds on the bench
database: deductions through keen_client direct, through a real PgBouncer in transaction
pooling (KEEN_POOLER=pgbouncer: no prepared statements, SET LOCAL timeouts), and through
AsyncKeen (one event loop, as many tasks as threads). Ratios are medians of per-round ratios;
docs/client.md says what each side runs."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

GOALS: list[tuple[str, str, str, Callable[[float], bool]]] = [
    (
        "ratio_client_pgbouncer_vs_direct",
        "Python client through PgBouncer (transaction pooling) / direct",
        ">= 0.8",
        lambda v: v >= 0.8,
    ),
    ("ratio_async_vs_threaded", "AsyncKeen deductions (one loop) / threaded client", ">= 0.9", lambda v: v >= 0.9),
]


def _threaded(keen: Any, users: int, seconds: float, threads: int, uid: Callable[[int], Any]) -> tuple[float, int]:
    done, errors = [0] * threads, [0] * threads
    stop_at = time.monotonic() + seconds

    def work(i: int) -> None:
        rnd = random.Random(i)
        while time.monotonic() < stop_at:
            user = uid(rnd.randint(1, users))
            try:
                with keen.as_user(user) as tx:
                    tx.credits.deduct_credits(user, Decimal("0.01"))
                done[i] += 1
            except Exception:
                errors[i] += 1

    t0 = time.monotonic()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.monotonic() - t0), sum(errors)


async def _async(akeen: Any, users: int, seconds: float, tasks: int, uid: Callable[[int], Any]) -> tuple[float, int]:
    done, errors = [0] * tasks, [0] * tasks
    stop_at = time.monotonic() + seconds

    async def work(i: int) -> None:
        rnd = random.Random(i)
        while time.monotonic() < stop_at:
            user = uid(rnd.randint(1, users))
            try:
                async with akeen.as_user(user) as tx:
                    await tx.credits.deduct_credits(user, Decimal("0.01"))
                done[i] += 1
            except Exception:
                errors[i] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(work(i) for i in range(tasks)))
    return sum(done) / (time.monotonic() - t0), sum(errors)


def measure(b: Any) -> None:
    """Run on a keen_db.bench.Bench after its throughput rounds; adds client_direct_tps,
    client_pgbouncer_tps, client_async_tps and the two ratios to b.results."""
    from keen_client import AsyncKeen, Keen, PoolSettings

    from . import cluster
    from .bench import bench_uid

    threads, users, seconds = b.cfg.clients, b.cfg.users, b.cfg.seconds
    url = b.s.role_url("keen_app", b.db)
    settings = PoolSettings(min_size=threads, max_size=threads, timeout=30)
    samples: dict[str, list[float]] = {"client_direct_tps": [], "client_pgbouncer_tps": [], "client_async_tps": []}
    bouncer = None
    if cluster.pgbouncer_bin() is None or not b.s.embedded:
        b.skipped["client_pgbouncer"] = "pgbouncer is not installed (or the server is not the embedded one)"
    else:
        bouncer = cluster.start_pgbouncer(b.s, pool_size=threads)
    failures = 0
    # Each side: `threads` threads or tasks on a pool of `threads` connections (PgBouncer: as
    # many server connections), opened and warmed once before the first round; one event loop
    # for every async round (asyncio.Runner), like the threaded pools kept across rounds. The
    # order of the three paths turns each round, so none always runs first or last.
    runner = asyncio.Runner()
    try:
        direct = Keen(url, settings)
        pooled = (
            Keen(bouncer.url(url), PoolSettings(min_size=threads, max_size=threads, timeout=30, pooler="pgbouncer"))
            if bouncer
            else None
        )
        akeen = AsyncKeen(url, settings)
        runner.run(akeen.open(wait=True))
        direct.pool.wait()
        if pooled is not None:
            pooled.pool.wait()
        paths: list[tuple[str, Callable[[float], tuple[float, int]]]] = [
            ("client_direct_tps", lambda t: _threaded(direct, users, t, threads, bench_uid)),
            ("client_async_tps", lambda t: runner.run(_async(akeen, users, t, threads, bench_uid))),
        ]
        if pooled is not None:
            paths.insert(1, ("client_pgbouncer_tps", lambda t: _threaded(pooled, users, t, threads, bench_uid)))
        try:
            for _, run in paths:  # warm-up, not counted: every connection has run the calls
                failures += run(min(1.0, seconds))[1]
            for i in range(b.cfg.rounds):
                b.echo(f"client paths {i + 1}/{b.cfg.rounds}")
                for key, run in paths[i % len(paths) :] + paths[: i % len(paths)]:
                    tps, err = run(seconds)
                    samples[key].append(tps)
                    failures += err
        finally:
            direct.close()
            if pooled is not None:
                pooled.close()
            runner.run(akeen.close())
    finally:
        runner.close()
        if bouncer is not None:
            bouncer.stop()
    b.failures += failures

    def ratio(a: str, c: str) -> float | None:
        pairs = [x / y for x, y in zip(samples[a], samples[c], strict=False) if y]
        return round(statistics.median(pairs), 3) if pairs else None

    for key, values in samples.items():
        if values:
            b.results[key] = round(statistics.median(values), 1)
    b.results["ratio_client_pgbouncer_vs_direct"] = ratio("client_pgbouncer_tps", "client_direct_tps")
    b.results["ratio_async_vs_threaded"] = ratio("client_async_tps", "client_direct_tps")
