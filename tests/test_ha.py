"""keen-db ha: pg_auto_failover (a monitor and two nodes) in a KEEN_HOME of its own under /var/tmp,
on free ports; the shared embedded cluster is never touched. `ha up` runs once for the module,
`ha down` always runs at the end (also when a test fails) and must leave no process behind.

Money moves through the multi-host URL `keen-db url` prints, as keen_app acting as a registered
user, with an idempotency key on every charge; credits are granted by the admin through a login
session (keen.start_login_session), never act_as(admin). Figures measured here (seconds until
writes resume, downtime) are printed and written to ha/measured.json, never asserted."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from keen_client import Keen, PoolSettings
from keen_client.streaming import listen
from keen_db import config, ha
from keen_db.backup import free_port
from keen_db.doctor import check_replication

KEEN_DB = str(Path(sys.executable).parent / "keen-db")
ADMIN_EMAIL = os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com")
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "2con-creator")
COST = Decimal("0.01")  # charged 0.05 at 5x
CHARGE = Decimal("0.05")

pytestmark = pytest.mark.skipif(shutil.which("pg_autoctl") is None, reason="postgresql-15-auto-failover missing")


def _free_base() -> int:
    for _ in range(50):
        base = free_port()
        if all(ha._port_free(base + i) for i in range(3)):
            return base
    raise RuntimeError("no three consecutive free ports")


class HA:
    def __init__(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="keen_ha_", dir="/var/tmp"))
        self.home = home
        self.base = _free_base()
        self.measured: dict[str, Any] = {}

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KEEN_DATABASE_URL", "KEEN_PORT")}
        return {**env, "KEEN_HOME": str(self.home), "KEEN_HA_PORT": str(self.base), "KEEN_PORT": str(self.base + 3)}

    @property
    def settings(self) -> config.Settings:
        return config.Settings(self.home, self.base + 3, "keen", None)

    def cli(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        res = subprocess.run([KEEN_DB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"keen-db {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def url(self, *flags: str) -> str:
        return self.cli("url", *flags).stdout.strip()

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("ha", "status", "--json").stdout.strip().splitlines()[-1])["nodes"]

    def primary(self) -> dict[str, Any]:
        return next(n for n in self.status() if n["role"] == "primary")

    def processes(self) -> list[int]:
        """Every process working under this HA root (postgres chdirs to its data directory)
        or running pg_autoctl on it."""
        root = str((self.home / "ha").resolve())
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and (cwd.startswith(root) or root in cmdline):
                found.append(int(proc.name))
        return found

    def measure(self, key: str, value: Any) -> None:
        self.measured[key] = value
        print(f"measured {key} = {value}")
        (self.home / "ha" / "measured.json").write_text(json.dumps(self.measured, indent=1) + "\n")


@pytest.fixture(scope="module")
def cluster_ha():
    h = HA()
    try:
        h.cli("ha", "up", timeout=300)
        yield h
    finally:
        h.cli("ha", "down", check=False, timeout=120)
        leftover = h.processes()
        for pid in leftover:  # never leave a server behind, even when down is broken
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if h.measured:
            print(json.dumps(h.measured))
        if not os.environ.get("KEEN_HA_TEST_KEEP"):  # keep the logs to read
            shutil.rmtree(h.home, ignore_errors=True)
        assert leftover == [], f"ha down left processes behind: {leftover}"


def _register(app_url: str, tag: str) -> uuid.UUID:
    name = f"{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(app_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id FROM keen.register_user(%s, %s, %s)", (f"{name}@example.com", name, "correct horse battery")
        ).fetchone()
    assert row is not None
    return row[0]


def _grant(app_url: str, user_id: uuid.UUID, amount: Decimal) -> None:
    """The admin's purchase for a user: the admin becomes the actor through a login session
    (keen.act_as refuses an admin once login sessions exist)."""
    with psycopg.connect(app_url) as conn:
        if conn.execute("SELECT pg_catalog.to_regproc('keen.start_login_session') IS NOT NULL").fetchone()[0]:
            conn.execute("SELECT 1 FROM keen.start_login_session(%s, %s)", (ADMIN_EMAIL, ADMIN_PASSWORD))
        else:
            conn.execute("SELECT keen.act_as(u.user_id) FROM keen.login(%s, %s) u", (ADMIN_EMAIL, ADMIN_PASSWORD))
        conn.execute("SELECT keen.add_credits(%s, %s, 'ha test purchase')", (user_id, amount))


def _assert_ledger_clean(maintenance_url: str) -> None:
    with psycopg.connect(maintenance_url) as conn:
        bad = conn.execute("SELECT user_id, balance, ledger_sum FROM keen.verify_ledger() WHERE NOT ok").fetchall()
    assert bad == [], f"ledger out of balance: {bad}"


class Load:
    """Concurrent deductions through the multi-host URL, one thread and one user each, every
    charge with its own idempotency key. A charge whose call raised is in doubt: the thread
    retries the same key (reconnecting) until the call returns; only then is it acknowledged.
    For each acknowledged key: how many calls raised before it, and the port that answered."""

    def __init__(self, app_url: str, users: list[uuid.UUID], tag: str, pause: float = 0.01):
        self.url, self.users, self.tag, self.pause = app_url, users, tag, pause
        self.acked: dict[str, uuid.UUID] = {}
        self.ack_times: list[float] = []
        self.ack_ports: list[tuple[float, int]] = []
        self.tries: dict[str, tuple[int, int]] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i, u), daemon=True) for i, u in enumerate(users)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"

    def _run(self, n: int, user: uuid.UUID) -> None:
        conn: psycopg.Connection | None = None
        port = 0
        seq = 0
        while not self.stop.is_set():
            key = f"{self.tag}-{n}-{seq}"
            failed = 0
            while True:  # until this key is acknowledged
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                        port = conn.execute("SELECT pg_catalog.inet_server_port()").fetchone()[0]  # type: ignore[index]
                    row = conn.execute(
                        "SELECT (keen.deduct_credits(%s, %s, NULL, 'ha load', %s)).id FROM keen.act_as(%s)",
                        (user, COST, key, user),
                    ).fetchone()
                    assert row is not None
                    with self.lock:
                        self.acked[key] = row[0]
                        self.ack_times.append(time.monotonic())
                        self.ack_ports.append((self.ack_times[-1], port))
                        self.tries[key] = (failed, port)
                    break
                except psycopg.OperationalError as exc:
                    failed += 1
                    with self.lock:
                        self.errors.append(type(exc).__name__)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.05)
            seq += 1
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for(self, target: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < target:
            assert time.monotonic() < deadline, f"only {self.count()} of {target} charges acknowledged in {timeout}s"
            time.sleep(0.05)

    def largest_gap(self, start: float, end: float) -> float:
        """The longest pause between two acknowledgements within [start, end], in seconds."""
        with self.lock:
            times = sorted(x for x in self.ack_times if start <= x <= end)
        return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 2)

    def first_ack_on_another_port(self, after: float, port: int) -> float:
        with self.lock:
            return min(t for t, p in self.ack_ports if t > after and p != port)


def _check_every_acknowledged_charge_kept(h: HA, load: Load, granted: Decimal) -> None:
    su = h.url("--superuser")
    with psycopg.connect(su) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, id FROM keen.credit_transactions "
            "WHERE user_id = ANY(%s) AND transaction_type = 'usage' AND idempotency_key LIKE %s",
            (load.users, f"{load.tag}-%"),
        ).fetchall()
        balances = dict(
            conn.execute(
                "SELECT user_id, current_balance FROM keen.credit_accounts WHERE user_id = ANY(%s)", (load.users,)
            ).fetchall()
        )
    present = {k: i for k, i in rows}
    assert len(rows) == len(present), "a key was charged twice"
    missing = set(load.acked) - set(present)
    lost = {k: f"{load.tries[k][0]} failed call(s), then answered by port {load.tries[k][1]}" for k in sorted(missing)}
    assert missing == set(), f"{len(missing)} acknowledged charge(s) lost: {lost}"
    assert all(present[k] == v for k, v in load.acked.items()), "an acknowledged key names another transaction"
    # Every call was retried until acknowledged, so nothing beyond the acknowledged was charged either.
    assert set(present) == set(load.acked)
    for i, user in enumerate(load.users):
        charged = sum(1 for k in load.acked if k.startswith(f"{load.tag}-{i}-"))
        assert balances[user] == granted - charged * CHARGE
    _assert_ledger_clean(h.url("--maintenance"))


# --- the set-up ---------------------------------------------------------------------------------


def test_ha_status_json_has_the_contract_shape(cluster_ha: HA) -> None:
    """Rule: `ha status --json` prints {"nodes": [{name, port, role, state, data_directory, lag_bytes}]}."""
    nodes = cluster_ha.status()
    assert [sorted(n) for n in nodes] == [sorted(["name", "port", "role", "state", "data_directory", "lag_bytes"])] * 2
    assert sorted(n["role"] for n in nodes) == ["primary", "secondary"]
    assert sorted(n["state"] for n in nodes) == ["primary", "secondary"]
    assert {n["port"] for n in nodes} == {cluster_ha.base + 1, cluster_ha.base + 2}
    for n in nodes:
        assert isinstance(n["lag_bytes"], int) and n["lag_bytes"] >= 0
        assert Path(n["data_directory"]).parent == cluster_ha.home / "ha"
    text = cluster_ha.cli("ha", "status").stdout.strip().splitlines()
    assert len(text) == 2 and all(n["name"] in line for n, line in zip(nodes, text, strict=True))


def test_ha_up_is_idempotent(cluster_ha: HA) -> None:
    """Rule: a second `ha up` exits 0 and changes nothing: the same nodes, the same primary."""
    before = cluster_ha.status()
    supervisors = {n: (cluster_ha.home / "ha" / "run" / f"{n}.pid").read_text() for n in ("monitor", *ha.NODES)}
    cluster_ha.cli("ha", "up")
    after = cluster_ha.status()
    assert [(n["name"], n["port"], n["role"]) for n in after] == [(n["name"], n["port"], n["role"]) for n in before]
    assert {n: (cluster_ha.home / "ha" / "run" / f"{n}.pid").read_text() for n in supervisors} == supervisors


def test_url_reaches_the_primary_and_read_only_prefers_the_standby(cluster_ha: HA) -> None:
    """Rule: while HA runs `keen-db url` is multi-host read-write, `--read-only` prefer-standby."""
    url, ro = cluster_ha.url(), cluster_ha.url("--read-only")
    assert "target_session_attrs=read-write" in url and "target_session_attrs=prefer-standby" in ro
    assert url.startswith("postgresql://keen_app:")
    with psycopg.connect(url) as conn:
        port, recovery = conn.execute("SELECT pg_catalog.inet_server_port(), pg_catalog.pg_is_in_recovery()").fetchone()
    assert (port, recovery) == (cluster_ha.primary()["port"], False)
    with psycopg.connect(ro) as conn:
        recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
    assert recovery is True


def test_standby_has_roles_functions_and_data_by_replication(cluster_ha: HA) -> None:
    """Rule: migrated and seeded once, on the primary; the standby has the same roles (keen_app
    logs in with its password), functions and seeded admin through replication alone."""
    standby = next(n for n in cluster_ha.status() if n["role"] == "secondary")
    s = cluster_ha.settings
    app = make_conninfo(ha.layout(s).superuser(standby["name"], "keen"), user="keen_app", password=s.secret("keen_app"))
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0] is True
        assert conn.execute(
            "SELECT pg_catalog.to_regprocedure('keen.deduct_credits(uuid,numeric,uuid,text,text)') IS NOT NULL"
        ).fetchone()[0]
    with psycopg.connect(ha.layout(s).superuser(standby["name"], "keen")) as conn:
        assert conn.execute("SELECT count(*) FROM keen.users WHERE role = 'super_admin'").fetchone()[0] == 1


def test_an_acknowledged_commit_is_on_both_nodes(cluster_ha: HA) -> None:
    """Rule: synchronous replication: synchronous_standby_names is set, the standby streams as a
    quorum/sync standby, and once a commit returns the standby has flushed past it."""
    su = cluster_ha.url("--superuser")
    user = _register(cluster_ha.url(), "sync")
    _grant(cluster_ha.url(), user, Decimal("10"))
    with psycopg.connect(su, autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] != ""
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        with conn.transaction():
            conn.execute("SELECT keen.act_as(%s)", (user,))
            conn.execute("SELECT keen.deduct_credits(%s, %s, NULL, 'sync', 'sync-1')", (user, COST))
            before_commit = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()").fetchone()[0]
        states, flushed_past = conn.execute(
            "SELECT array_agg(sync_state), bool_and(flush_lsn >= %s::pg_lsn) FROM pg_catalog.pg_stat_replication",
            (str(before_commit),),
        ).fetchone()
    assert states and set(states) <= {"sync", "quorum"}
    assert flushed_past is True
    _assert_ledger_clean(cluster_ha.url("--maintenance"))


def test_doctor_reports_synchronous_replication(cluster_ha: HA) -> None:
    """Rule: the doctor's replication check says synchronous replication is in force on the
    primary, and on the standby that it streams."""
    s = cluster_ha.settings
    L = ha.layout(s)
    for node in cluster_ha.status():
        with psycopg.connect(L.superuser(node["name"], "keen"), autocommit=True) as conn:
            ok, detail = check_replication(s, conn)
        assert ok, detail
        assert ("synchronous:" in detail) if node["role"] == "primary" else ("standby, streaming" in detail)


def test_a_replayed_charge_is_acknowledged_only_once_the_standby_has_it(cluster_ha: HA) -> None:
    """Rule: a retry of an idempotency key answered from the ledger commits like a charge: it waits
    for the synchronous standby (keen_private.credit_replay writes a WAL record while
    synchronous_standby_names is set), so a row that exists on the primary alone (a crash while
    its commit waited for the standby) is never acknowledged by a replay. Shown with the standby's
    replay paused and the caller at synchronous_commit = remote_apply: the replay waits in SyncRep
    until the standby applies again, and then answers with the first transaction."""
    url = cluster_ha.url()
    user = _register(url, "replay")
    _grant(url, user, Decimal("10"))
    charge = "SELECT (keen.deduct_credits(%s, %s, NULL, 'ha replay', 'replay-1')).id FROM keen.act_as(%s)"
    with psycopg.connect(url, autocommit=True) as conn:
        first = conn.execute(charge, (user, COST, user)).fetchone()[0]
    L = ha.layout(cluster_ha.settings)
    primary = cluster_ha.primary()["name"]
    standby = next(n for n in ha.NODES if n != primary)
    answers: list[Any] = []

    def replay() -> None:
        try:
            with psycopg.connect(url, autocommit=True, application_name="keen_ha_replay") as conn:
                conn.execute("SET synchronous_commit = remote_apply")
                answers.append(conn.execute(charge, (user, COST, user)).fetchone()[0])
        except BaseException as exc:  # reported by the test thread
            answers.append(exc)

    waited = False
    with (
        psycopg.connect(L.superuser(standby), autocommit=True) as sb,
        psycopg.connect(L.superuser(primary), autocommit=True) as pr,
    ):
        sb.execute("SELECT pg_catalog.pg_wal_replay_pause()")
        thread = threading.Thread(target=replay, daemon=True)
        try:
            thread.start()
            deadline = time.monotonic() + 30
            while not waited and not answers and time.monotonic() < deadline:
                waited = pr.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity "
                    "WHERE application_name = 'keen_ha_replay' AND wait_event = 'SyncRep')"
                ).fetchone()[0]
                time.sleep(0.05)
            answered_while_paused = list(answers)
        finally:
            sb.execute("SELECT pg_catalog.pg_wal_replay_resume()")
            thread.join(30)
    assert waited and answered_while_paused == [], f"the replay answered without the standby: {answered_while_paused}"
    assert answers == [first]
    with psycopg.connect(cluster_ha.url("--superuser")) as conn:
        n = conn.execute(
            "SELECT count(*) FROM keen.credit_transactions WHERE user_id = %s AND idempotency_key = 'replay-1'", (user,)
        ).fetchone()[0]
    assert n == 1
    _assert_ledger_clean(cluster_ha.url("--maintenance"))


# --- failures -----------------------------------------------------------------------------------


def test_kill9_of_the_primary_under_load_loses_no_acknowledged_charge(cluster_ha: HA) -> None:
    """Rule: kill -9 of the primary's postmaster under concurrent deductions: the standby is
    promoted, writes resume through the same multi-host URL, every acknowledged charge is on the
    new primary (none lost, none doubled: retries reuse the idempotency key), ledger clean."""
    url = cluster_ha.url()
    granted = Decimal("1000")
    users = [_register(url, f"kill{i}") for i in range(3)]
    for u in users:
        _grant(url, u, granted)
    old = cluster_ha.primary()
    L = ha.layout(cluster_ha.settings)
    with Load(url, users, "kill") as load:
        load.wait_for(60, 60)
        pid = ha.postmaster_pid(L, old["name"])
        assert pid is not None
        at_kill = load.count()
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        load.wait_for(at_kill + 60, 120)  # writes resumed
        resumed = load.first_ack_on_another_port(killed, old["port"])
    cluster_ha.measure("kill9_seconds_until_writes_resume_on_new_primary", round(resumed - killed, 2))
    cluster_ha.measure("kill9_largest_write_gap_seconds", load.largest_gap(killed - 1, resumed + 1))
    cluster_ha.measure("kill9_connection_errors_seen", len(load.errors))
    ha.wait_healthy(cluster_ha.settings, 120)
    cluster_ha.measure("kill9_charges_in_doubt", sum(1 for failed, _port in load.tries.values() if failed))
    _check_every_acknowledged_charge_kept(cluster_ha, load, granted)
    cluster_ha.measure("kill9_acknowledged_charges", len(load.acked))
    cluster_ha.measure("kill9_acknowledged_charges_lost", 0)
    new = cluster_ha.primary()
    cluster_ha.measure("kill9_new_primary", f"{old['name']} -> {new['name']}")


def test_controlled_failover_and_failback_under_load_keep_every_charge(cluster_ha: HA) -> None:
    """Rule: `keen-db ha failover` switches primary and standby under load with no acknowledged
    charge lost, and a second one switches back (failback); ledger clean."""
    url = cluster_ha.url()
    granted = Decimal("1000")
    users = [_register(url, f"switch{i}") for i in range(3)]
    for u in users:
        _grant(url, u, granted)
    first = cluster_ha.primary()["name"]
    with Load(url, users, "switch") as load:
        load.wait_for(40, 60)
        t0 = time.monotonic()
        out = cluster_ha.cli("ha", "failover").stdout
        assert "->" in out
        after = cluster_ha.primary()["name"]
        assert after != first
        n = load.count()
        load.wait_for(n + 40, 60)
        gap = load.largest_gap(t0, time.monotonic())
        t1 = time.monotonic()
        cluster_ha.cli("ha", "failover")
        assert cluster_ha.primary()["name"] == first  # failback
        n = load.count()
        load.wait_for(n + 40, 60)
    cluster_ha.measure("controlled_failover_cli_seconds", round(t1 - t0, 2))
    cluster_ha.measure("controlled_failover_output", out.strip())
    cluster_ha.measure("controlled_failover_largest_write_gap_seconds", gap)
    _check_every_acknowledged_charge_kept(cluster_ha, load, granted)
    assert cluster_ha.settings and ha.healthy(cluster_ha.settings)[0]


def test_listener_survives_a_failover_and_resumes_by_event_id(cluster_ha: HA) -> None:
    """Rule: keen_client's listen() on the multi-host URL reconnects to the new primary after a
    failover and resumes after the last event id: every event once, in order."""
    url = cluster_ha.url()
    user = _register(url, "listen")
    with psycopg.connect(url) as conn:
        conn.execute("SELECT keen.act_as(%s)", (user,))
        session = conn.execute(
            "SELECT id FROM keen.create_session(%s, %s, 'main', 'ha listener', '/tmp')", (user, f"ha-{uuid.uuid4()}")
        ).fetchone()[0]
    emitted: list[int] = []

    def emit(i: int) -> None:
        for _ in range(100):
            try:
                with psycopg.connect(url, connect_timeout=5) as conn:
                    conn.execute("SELECT keen.act_as(%s)", (user,))
                    emitted.append(
                        conn.execute(
                            "SELECT keen.emit_event(%s, 'tick', %s)", (session, json.dumps({"i": i}))
                        ).fetchone()[0]
                    )
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise AssertionError("could not emit an event")

    received: list[int] = []
    failure: list[BaseException] = []
    keen = Keen(url, PoolSettings(min_size=1, max_size=2, timeout=30))

    def follow() -> None:
        try:
            for event in listen(keen, session, as_user=user, max_events=10, timeout=120, poll_interval=1.0):
                received.append(event.event_id)
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        for i in range(5):
            emit(i)
        deadline = time.monotonic() + 30
        while len(received) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(received) == 5, failure
        cluster_ha.cli("ha", "failover")
        for i in range(5, 10):
            emit(i)
        thread.join(120)
    finally:
        keen.close()
    assert not failure, failure
    assert received == emitted == sorted(set(emitted))


def test_wal_archive_continues_from_the_new_primary_and_base_backup_from_standby(cluster_ha: HA) -> None:
    """Rule: backups keep working after a failover: a verified base backup comes from the
    standby, and the WAL archive receives the new primary's timeline after a failover."""
    out = cluster_ha.cli("ha", "basebackup").stdout
    assert "(secondary)" in out and "verified" in out
    archive = cluster_ha.home / "ha" / "wal_archive"
    cluster_ha.cli("ha", "failover")
    su = cluster_ha.url("--superuser")
    with psycopg.connect(su, autocommit=True) as conn:
        segment = conn.execute("SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + 60
        while not (archive / f"{segment}.gz").exists():
            assert time.monotonic() < deadline, f"{segment} was not archived from the new primary"
            time.sleep(0.2)
    tli = int(segment[:8], 16)
    assert tli > 1  # the timeline the failovers started
    assert (archive / f"{tli:08X}.history.gz").exists() or (archive / f"{tli:08X}.history").exists()


def test_ha_down_leaves_no_process(cluster_ha: HA) -> None:
    """Rule: `ha down` stops the monitor and both nodes, and nothing of them keeps running;
    `keen-db url` then no longer prints the HA URL."""
    cluster_ha.cli("ha", "down")
    assert cluster_ha.processes() == []
    assert not ha.running(cluster_ha.settings)
    assert "target_session_attrs" not in cluster_ha.url()
