"""`keen-db ha`: high availability for the embedded set-up, on pg_auto_failover.

A monitor and two PostgreSQL nodes on this machine, under $KEEN_HOME/ha, each supervised by its
own `pg_autoctl run` (started detached, as the `postgres` OS user, its pid in ha/run/NAME.pid
and its log in ha/NAME.log). The monitor keeps synchronous replication honest: with one standby
in the replication quorum, the primary runs with synchronous_standby_names = 'ANY 1 (...)', so
a commit is acknowledged only once it is on both nodes; when the standby is lost the monitor
moves the primary to `wait_primary` and turns synchronous replication off (writes go on, on one
node) until the standby has caught up again. When the primary is lost it promotes the standby.
A retry of a charge answered from the ledger waits for the standby too (keen_private.credit_replay
writes a WAL record while synchronous_standby_names is set): a crashed primary that its keeper
restarts may hold a commit the standby never received, and must not acknowledge it
(docs/scaling.md).

Layout (all owned by the postgres user, mode 0700):
    ha/ha.json            ports and names, written once (later runs keep them)
    ha/monitor, ha/node1, ha/node2   data directories
    ha/run/               sockets and pid files; XDG_RUNTIME_DIR of pg_autoctl
    ha/config, ha/share   pg_autoctl's configuration and state (XDG_CONFIG_HOME, XDG_DATA_HOME)
    ha/pgpass             the passwords pg_autoctl and the standby's WAL receiver use
    ha/wal_archive        WAL archived by whichever node is primary (cluster.archive_command)
    ha/basebackups        base backups taken from the standby (`keen-db ha basebackup`)

Security: every TCP login is scram-sha-256 on 127.0.0.1 only; a local (socket) login as
`postgres` is peer (pg_autoctl's own), every other local login scram. pg_auto_failover's health
check role (pgautofailover_monitor, no privilege) logs in with its built-in password. The node
and replication traffic is not encrypted (`--no-ssl`): it never leaves the loopback interface.

Migrations and seeds run once, on the primary; roles, passwords, functions and policies reach
the standby by replication.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import cluster, config, deploy

MONITOR = "monitor"
NODES = ("node1", "node2")
FORMATION = "default"
DEFAULT_BASE_PORT = 54340  # monitor; the nodes take the next two ports
PG_AUTOCTL = "pg_autoctl"
# Reported states in which a node serves writes (pg_auto_failover's state machine).
PRIMARY_STATES = frozenset({"single", "primary", "wait_primary", "join_primary", "apply_settings"})
CONNECT_TIMEOUT = 3


class HAError(RuntimeError):
    pass


Echo = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Layout:
    s: config.Settings
    monitor_port: int
    node_ports: dict[str, int]

    @property
    def root(self) -> Path:
        return self.s.home / "ha"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_file(self) -> Path:
        return self.root / "ha.json"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def wal_archive(self) -> Path:
        return self.root / "wal_archive"

    @property
    def basebackups(self) -> Path:
        return self.root / "basebackups"

    def pgdata(self, name: str) -> Path:
        return self.root / name

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def port(self, name: str) -> int:
        return self.monitor_port if name == MONITOR else self.node_ports[name]

    def env(self) -> dict[str, str]:
        """What every pg_autoctl (and the servers it starts) runs with: its files under ha/,
        passwords from ha/pgpass, local connections through ha/run."""
        return {
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "share"),
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "PGPASSFILE": str(self.pgpass),
            "PGHOST": str(self.run_dir),
            "PGCONNECT_TIMEOUT": "5",
        }

    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    def superuser(self, name: str, database: str = "postgres") -> str:
        """A direct superuser conninfo for one server (monitor or node)."""
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=self.port(name),
            user="postgres",
            password=self.s.secret("postgres"),
            dbname=database,
            connect_timeout=CONNECT_TIMEOUT,
        )


def layout(s: config.Settings) -> Layout:
    """The ports recorded at creation, else KEEN_HA_PORT (default 54340) and the next two."""
    state = s.home / "ha" / "ha.json"
    if state.exists():
        data = json.loads(state.read_text())
        return Layout(s, int(data["monitor_port"]), {n: int(p) for n, p in data["node_ports"].items()})
    base = int(os.environ.get("KEEN_HA_PORT", str(DEFAULT_BASE_PORT)))
    return Layout(s, base, {name: base + 1 + i for i, name in enumerate(NODES)})


# --- processes ---------------------------------------------------------------------------------


def _ids() -> dict[str, Any]:
    """subprocess arguments that run a program as the server user (when we are root)."""
    if os.geteuid() != 0:
        return {}
    uid, gid = cluster._server_uid_gid()
    return {"user": uid, "group": gid, "extra_groups": []}


def _run(L: Layout, cmd: list[str], check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, **L.env()},
        cwd=L.root,
        timeout=timeout,
        **_ids(),
    )
    if check and res.returncode != 0:
        out = (res.stderr or res.stdout).strip().splitlines()
        raise HAError(f"{' '.join(cmd[:3])} failed ({res.returncode}):\n" + "\n".join(out[-15:]))
    return res


def _alive(pid: int) -> bool:
    """A live (not zombie) pg_autoctl process with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"pg_autoctl" in cmdline


def supervisor_pid(L: Layout, name: str) -> int | None:
    try:
        pid = int(L.pidfile(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def postmaster_pid(L: Layout, name: str) -> int | None:
    try:
        pid = int((L.pgdata(name) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _spawn(L: Layout, name: str) -> int:
    """`pg_autoctl run` for one node, detached (its own session), logging to ha/NAME.log."""
    with open(L.log(name), "ab") as log:
        proc = subprocess.Popen(
            [PG_AUTOCTL, "run", "--pgdata", str(L.pgdata(name))],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **L.env()},
            cwd=L.root,
            start_new_session=True,
            **_ids(),
        )
    L.pidfile(name).write_text(f"{proc.pid}\n")
    return proc.pid


def _ensure_supervised(L: Layout, name: str, echo: Echo) -> None:
    if supervisor_pid(L, name) is not None:
        return
    _clear_orphans(L, name)
    pid = _spawn(L, name)
    echo(f"{name}: pg_autoctl run started (pid {pid}, log {L.log(name)})")


def _processes_in(path: Path) -> list[int]:
    """Processes working in `path` (every postgres process chdirs to its data directory)."""
    target = str(path.resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") == target:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _clear_orphans(L: Layout, name: str, grace: float = 10.0) -> None:
    """Backends of a postmaster that died hold its shared memory for a moment; wait for
    them, then SIGQUIT the stragglers (as the postmaster would have)."""
    deadline = time.monotonic() + grace
    signalled = False
    while pids := _processes_in(L.pgdata(name)):
        if time.monotonic() > deadline:
            if signalled:
                raise HAError(f"processes still run in {L.pgdata(name)}: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
            signalled, deadline = True, time.monotonic() + grace
        time.sleep(0.1)


def _stop_one(L: Layout, name: str, timeout: float = 30) -> bool:
    """SIGTERM to the supervisor (it stops its PostgreSQL with a fast shutdown), then make
    sure nothing is left: pg_ctl stop, and SIGKILL for its process group and anything still
    working in the data directory."""
    pid = supervisor_pid(L, name)
    stopped = pid is not None or postmaster_pid(L, name) is not None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if postmaster_pid(L, name) is not None:
        _run(L, [cluster.pg_bin("pg_ctl"), "stop", "-D", str(L.pgdata(name)), "-m", "fast", "-w"], check=False)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for straggler in _processes_in(L.pgdata(name)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(straggler, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _processes_in(L.pgdata(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    L.pidfile(name).unlink(missing_ok=True)
    return stopped


def running(s: config.Settings) -> bool:
    """HA runs for this KEEN_HOME: a node's supervisor is alive."""
    if not s.embedded or not (s.home / "ha" / "ha.json").exists():
        return False
    L = layout(s)
    return any(supervisor_pid(L, n) is not None for n in NODES)


# --- creation -------------------------------------------------------------------------------


def _hba(node: bool) -> str:
    rules = [
        "# written by keen-db ha up (pg_autoctl runs with --skip-pg-hba)",
        "local all postgres peer",
        "local all all scram-sha-256",
    ]
    if node:
        rules.append("host replication pgautofailover_replicator 127.0.0.1/32 scram-sha-256")
        rules.append("host replication postgres 127.0.0.1/32 scram-sha-256")  # keen-db ha basebackup
    else:
        rules.append("host pg_auto_failover autoctl_node 127.0.0.1/32 scram-sha-256")
    rules.append("host all all 127.0.0.1/32 scram-sha-256")
    return "\n".join(rules) + "\n"


def _conf(L: Layout, node: bool) -> str:
    """Settings of ours, in postgresql.auto.conf: read after pg_auto_failover's file, so they
    win over its tuning (it sizes shared_buffers for a machine of its own). pg_autoctl's
    ALTER SYSTEM (synchronous_standby_names) keeps them. The standby inherits the primary's
    file through pg_basebackup."""
    lines = [
        f"unix_socket_directories = '{L.run_dir}'",
        "listen_addresses = '127.0.0.1'",
        "timezone = 'UTC'",
        "log_line_prefix = '%m [%p] %u@%d '",
    ]
    if node:
        lines += [
            "shared_buffers = '256MB'",
            "max_connections = 200",
            "synchronous_commit = on",
            "wal_compression = lz4",
            "archive_mode = on",
            f"archive_command = '{cluster.archive_command(L.wal_archive)}'",
            "archive_timeout = 60",
        ]
    else:
        lines += ["shared_buffers = '64MB'", "max_connections = 50"]
    return "# keen-db ha\n" + "\n".join(lines) + "\n"


def _owned(path: Path, mode: int = 0o700) -> None:
    cluster._owned_dir(path, mode)


def _owned_file(path: Path, text: str, mode: int = 0o600) -> None:
    uid, gid = cluster._server_uid_gid()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _initdb(L: Layout, name: str) -> None:
    """The data directory of the monitor or of the first node, initialised by us (not by
    pg_autoctl, whose initdb trusts every local login): scram, checksums, our rules."""
    pgdata = L.pgdata(name)
    if pgdata.exists():
        shutil.rmtree(pgdata)  # a creation that failed half-way
    _owned(pgdata)
    with tempfile.NamedTemporaryFile("w", dir=L.run_dir, delete=False) as fh:
        fh.write(L.s.secret("postgres") + "\n")
        pwfile = Path(fh.name)
    uid, gid = cluster._server_uid_gid()
    os.chown(pwfile, uid, gid)
    try:
        _run(
            L,
            [
                cluster.pg_bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",
            ],
        )
    finally:
        pwfile.unlink(missing_ok=True)
    _owned_file(pgdata / "pg_hba.conf", _hba(node=name != MONITOR))
    with open(pgdata / "postgresql.auto.conf", "a") as fh:
        fh.write(_conf(L, node=name != MONITOR))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _prepare(L: Layout) -> None:
    s = L.s
    s.home.mkdir(parents=True, exist_ok=True)
    os.chmod(s.home, 0o711)
    cluster._check_reachable(s.home)
    _owned(L.root)
    for d in (L.run_dir, L.root / "config", L.root / "share", L.wal_archive):
        _owned(d)
    if not L.state_file.exists():
        for name in (MONITOR, *NODES):
            if not _port_free(L.port(name)):
                raise HAError(f"port {L.port(name)} (for the {name}) is in use: set KEEN_HA_PORT to a free base port")
        L.state_file.write_text(
            json.dumps({"monitor_port": L.monitor_port, "node_ports": L.node_ports, "formation": FORMATION}) + "\n"
        )
    autoctl, replicator = s.secret("ha_autoctl_node"), s.secret("ha_replicator")
    _owned_file(
        L.pgpass,
        f"127.0.0.1:*:*:autoctl_node:{autoctl}\n127.0.0.1:*:*:pgautofailover_replicator:{replicator}\n",
    )


def _connect(conninfo: str, **kw: Any) -> psycopg.Connection:
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **kw)


def _wait_connectable(conninfo: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with _connect(conninfo):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.3)
    raise HAError(f"{what} does not accept connections: {last}")


def _create_monitor(L: Layout, echo: Echo) -> None:
    cfg = L.root / "config" / "pg_autoctl" / str(L.pgdata(MONITOR)).lstrip("/") / "pg_autoctl.cfg"
    if not (L.pgdata(MONITOR) / "PG_VERSION").exists() or not cfg.exists():
        echo("monitor: initdb and pg_autoctl create monitor")
        _initdb(L, MONITOR)
        _run(
            L,
            [
                PG_AUTOCTL,
                "create",
                "monitor",
                "--pgdata",
                str(L.pgdata(MONITOR)),
                "--pgport",
                str(L.monitor_port),
                "--pgctl",
                cluster.pg_bin("pg_ctl"),
                "--hostname",
                "127.0.0.1",
                "--no-ssl",
                "--skip-pg-hba",
            ],
        )
        _run(
            L,
            [
                PG_AUTOCTL,
                "config",
                "set",
                "--pgdata",
                str(L.pgdata(MONITOR)),
                "postgresql.listen_addresses",
                "127.0.0.1",
            ],
        )
    _ensure_supervised(L, MONITOR, echo)
    _wait_connectable(L.superuser(MONITOR, "pg_auto_failover"), 60, "the monitor")
    with _connect(L.superuser(MONITOR, "pg_auto_failover")) as conn:
        conn.execute(sql.SQL("ALTER ROLE autoctl_node PASSWORD {}").format(sql.Literal(L.s.secret("ha_autoctl_node"))))


def _create_node(L: Layout, name: str, echo: Echo) -> None:
    """pg_autoctl create postgres: the first node registers its (initdb'd by us) data
    directory and becomes the primary; the second one is made by pg_basebackup from it."""
    pgdata = L.pgdata(name)
    first = not any((L.pgdata(n) / "PG_VERSION").exists() for n in NODES if n != name)
    if first:
        _initdb(L, name)
    else:
        if pgdata.exists():
            shutil.rmtree(pgdata)
        _owned(pgdata)
    echo(f"{name}: pg_autoctl create postgres ({'primary' if first else 'standby by pg_basebackup'})")
    _run(
        L,
        [
            PG_AUTOCTL,
            "create",
            "postgres",
            "--pgdata",
            str(pgdata),
            "--pgport",
            str(L.node_ports[name]),
            "--pghost",
            str(L.run_dir),
            "--listen",
            "127.0.0.1",
            "--hostname",
            "127.0.0.1",
            "--name",
            name,
            "--dbname",
            L.s.database,
            "--formation",
            FORMATION,
            "--monitor",
            L.monitor_uri(),
            "--pgctl",
            cluster.pg_bin("pg_ctl"),
            "--no-ssl",
            "--skip-pg-hba",
        ],
        timeout=600,
    )
    _run(L, [PG_AUTOCTL, "config", "set", "--pgdata", str(pgdata), "replication.password", L.s.secret("ha_replicator")])


def _node_created(L: Layout, name: str) -> bool:
    return (L.pgdata(name) / "PG_VERSION").exists() and (
        L.root / "share" / "pg_autoctl" / str(L.pgdata(name)).lstrip("/") / "pg_autoctl.state"
    ).exists()


def up(s: config.Settings, echo: Echo = _quiet, timeout: float = 120) -> list[dict[str, Any]]:
    """Create (first time) and start the monitor and both nodes, migrate and seed on the
    primary, and wait until one node is primary and the other a streaming synchronous
    standby. Idempotent: a second call starts what is not running and changes nothing else."""
    if not s.embedded:
        raise HAError("ha manages the embedded set-up only (KEEN_DATABASE_URL is set)")
    if shutil.which(PG_AUTOCTL) is None:
        raise HAError("pg_autoctl not found: install postgresql-15-auto-failover (make system does)")
    L = layout(s)
    _prepare(L)
    _create_monitor(L, echo)
    first, second = NODES
    if not _node_created(L, first) and not _node_created(L, second):
        _create_node(L, first, echo)
    for name in NODES:
        if _node_created(L, name):
            _ensure_supervised(L, name, echo)
    primary = wait_primary(s, timeout)
    with _connect(L.superuser(primary)) as conn:  # reaches the standby by replication
        conn.execute(
            sql.SQL("ALTER ROLE pgautofailover_replicator PASSWORD {}").format(sql.Literal(s.secret("ha_replicator")))
        )
    echo(f"{primary} is primary: migrate, role passwords, seed (once, on the primary)")
    _deploy(s, L, primary)
    for name in NODES:
        if not _node_created(L, name):
            _create_node(L, name, echo)
            _ensure_supervised(L, name, echo)
    return wait_healthy(s, timeout)


def _deploy(s: config.Settings, L: Layout, primary: str) -> None:
    """On the primary, directly (yoyo reads a single-host URL only)."""
    url = L.superuser(primary, s.database)
    with _connect(L.superuser(primary)) as conn:
        if not conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (s.database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(s.database)))
    deploy.migrate(url)
    deploy.set_role_passwords(s, url)
    deploy.seed(url)
    fix_login_recorder(s, url)


def fix_login_recorder(s: config.Settings, superuser_url: str) -> None:
    """The failed-login recorder's loopback (keen_private.configure_login_recorder) stores the
    socket and port of the server it ran on; in HA that server may be the standby tomorrow,
    so the loopback gets both nodes and target_session_attrs=read-write instead."""
    L = layout(s)
    ports = ",".join(str(L.node_ports[n]) for n in NODES)
    value = f"host='{L.run_dir},{L.run_dir}' port={ports} target_session_attrs=read-write"
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_catalog.to_regclass('keen.auth_secrets')").fetchone()
        if row is None or row[0] is None:
            return
        conn.execute(
            "UPDATE keen.auth_secrets SET value = %s, updated_at = pg_catalog.now() "
            "WHERE name = 'recorder_conninfo' AND value IS DISTINCT FROM %s",
            (value, value),
        )


# --- state ----------------------------------------------------------------------------------


def monitor_state(s: config.Settings) -> list[dict[str, Any]]:
    """What the monitor knows of each node (pgautofailover.current_state, as `pg_autoctl
    show state --json` prints it)."""
    L = layout(s)
    with _connect(L.superuser(MONITOR, "pg_auto_failover")) as conn:
        cur = conn.execute(
            "SELECT nodename, nodeport, current_group_state::text, assigned_group_state::text, health, "
            "reported_lsn::text, reported_tli FROM pgautofailover.current_state(%s) ORDER BY node_id",
            (FORMATION,),
        )
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _probe(L: Layout, name: str) -> dict[str, Any] | None:
    """Ask the node itself: in recovery or not, and (on a primary) its standbys."""
    try:
        with _connect(L.superuser(name)) as conn:
            recovery = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
            standbys = conn.execute(
                "SELECT application_name, state, sync_state, "
                "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::bigint "
                "FROM pg_catalog.pg_stat_replication"
            ).fetchall()
            sync_names = conn.execute("SELECT pg_catalog.current_setting('synchronous_standby_names')").fetchone()[0]  # type: ignore[index]
    except psycopg.Error:
        return None
    return {"recovery": recovery, "standbys": [] if recovery else standbys, "sync_names": sync_names}


def status(s: config.Settings) -> list[dict[str, Any]]:
    """One entry per node: name, port, role (primary / secondary), state (its reported state
    at the monitor), data directory and lag in bytes (the secondary's replay position behind
    the primary's current WAL position; 0 for the primary; None when unknown)."""
    L = layout(s)
    try:
        monitor = {m["nodename"]: m for m in monitor_state(s)}
    except psycopg.Error:
        monitor = {}
    probes = {name: _probe(L, name) for name in NODES}
    node_ids = {name: i + 1 for i, name in enumerate(NODES)}
    lags: dict[str, int] = {}
    for probe in probes.values():
        for app, _state, _sync, behind in (probe or {}).get("standbys", []):
            lags[app] = behind
    nodes = []
    for name in NODES:
        m, probe = monitor.get(name), probes[name]
        state = m["current_group_state"] if m else ("stopped" if probe is None else "unknown")
        if probe is not None:
            role = "secondary" if probe["recovery"] else "primary"
        else:
            role = "primary" if state in PRIMARY_STATES else "secondary"
        lag: int | None
        if role == "primary" and probe is not None:
            lag = 0
        else:
            nid = _node_id(s, name, monitor) or node_ids[name]
            lag = lags.get(f"pgautofailover_standby_{nid}")
        nodes.append(
            {
                "name": name,
                "port": L.node_ports[name],
                "role": role,
                "state": state,
                "data_directory": str(L.pgdata(name)),
                "lag_bytes": lag,
            }
        )
    return nodes


def _node_id(s: config.Settings, name: str, monitor: dict[str, dict[str, Any]]) -> int | None:
    if not monitor:
        return None
    L = layout(s)
    try:
        with _connect(L.superuser(MONITOR, "pg_auto_failover")) as conn:
            row = conn.execute(
                "SELECT nodeid FROM pgautofailover.node WHERE formationid = %s AND nodename = %s", (FORMATION, name)
            ).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def primary_name(s: config.Settings) -> str | None:
    """The node that serves writes now (asked of the nodes themselves)."""
    L = layout(s)
    for name in NODES:
        probe = _probe(L, name)
        if probe is not None and not probe["recovery"]:
            return name
    return None


def wait_primary(s: config.Settings, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        name = primary_name(s)
        if name is not None:
            return name
        time.sleep(0.5)
    raise HAError(f"no node became primary within {timeout:.0f}s (see {layout(s).root}/*.log)")


def healthy(s: config.Settings) -> tuple[bool, str]:
    """One primary (state primary at the monitor) and one secondary streaming as a
    synchronous (quorum) standby: an acknowledged commit is on both nodes."""
    L = layout(s)
    try:
        monitor = monitor_state(s)
    except psycopg.Error as exc:
        return False, f"monitor unreachable: {exc}"
    states = {m["nodename"]: (m["current_group_state"], m["assigned_group_state"], m["health"]) for m in monitor}
    if sorted(v[0] for v in states.values()) != ["primary", "secondary"]:
        return False, f"states {states}"
    if any(cur != goal for cur, goal, _h in states.values()):
        return False, f"converging {states}"
    primary = next(n for n, v in states.items() if v[0] == "primary")
    probe = _probe(L, primary)
    if probe is None or probe["recovery"]:
        return False, f"{primary} does not serve writes yet"
    if not probe["sync_names"]:
        return False, f"{primary}: synchronous_standby_names is empty"
    if not any(st == "streaming" and sync in ("sync", "quorum") for _a, st, sync, _l in probe["standbys"]):
        return False, f"{primary}: no synchronous standby streaming ({probe['standbys']})"
    return True, f"{primary} primary, synchronous_standby_names = {probe['sync_names']}"


def wait_healthy(s: config.Settings, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        ok, detail = healthy(s)
        if ok:
            return status(s)
        time.sleep(0.5)
    raise HAError(f"the formation is not healthy after {timeout:.0f}s: {detail}")


# --- operations -----------------------------------------------------------------------------


def failover(s: config.Settings, timeout: float = 120) -> dict[str, Any]:
    """A controlled switch (pg_autoctl perform switchover): the primary is demoted once the
    standby has received everything, the standby is promoted, the old primary rejoins as the
    synchronous standby. Returns the old and new primary and the seconds it took."""
    ok, detail = healthy(s)
    if not ok:
        raise HAError(f"refusing to fail over an unhealthy formation: {detail}")
    L = layout(s)
    before = primary_name(s)
    t0 = time.monotonic()
    _run(
        L,
        [PG_AUTOCTL, "perform", "switchover", "--monitor", L.monitor_uri(), "--formation", FORMATION, "--group", "0"],
        timeout=timeout,
    )
    writable = time.monotonic() - t0
    wait_healthy(s, timeout)
    after = primary_name(s)
    return {
        "from": before,
        "to": after,
        "seconds_until_promoted": round(writable, 2),
        "seconds_until_synchronous": round(time.monotonic() - t0, 2),
    }


def down(s: config.Settings, echo: Echo = _quiet) -> bool:
    """Stop the monitor first (so that stopping a node triggers no failover), then the
    standby, then the primary. Nothing is left running."""
    L = layout(s)
    if not L.root.exists():
        return False
    primary = primary_name(s) if running(s) else None
    order = [MONITOR, *[n for n in NODES if n != primary], *([primary] if primary else [])]
    stopped = False
    for name in order:
        if _stop_one(L, name):
            echo(f"{name}: stopped")
            stopped = True
    return stopped


# --- URLs -----------------------------------------------------------------------------------


def conninfo(s: config.Settings, role: str = "keen_app", read_only: bool = False, database: str | None = None) -> str:
    """A libpq multi-host conninfo over both nodes: target_session_attrs=read-write reaches
    the primary wherever it is; read_only prefers the standby (and falls back to the
    primary when the standby is down)."""
    L = layout(s)
    password = s.secret("postgres") if role == "postgres" else s.secret(role, env=f"{role.upper()}_PASSWORD")
    return make_conninfo(
        "",
        host=",".join("127.0.0.1" for _ in NODES),
        port=",".join(str(L.node_ports[n]) for n in NODES),
        user=role,
        password=password,
        dbname=database or s.database,
        target_session_attrs="prefer-standby" if read_only else "read-write",
        connect_timeout="5",
    )


def superuser_conninfo(s: config.Settings, database: str | None = None) -> str:
    return conninfo(s, "postgres", database=database)


def url(s: config.Settings, role: str = "keen_app", read_only: bool = False) -> str:
    """conninfo() as a postgresql:// URL (host:port pairs, as libpq reads multi-host URLs)."""
    L = layout(s)
    password = s.secret("postgres") if role == "postgres" else s.secret(role, env=f"{role.upper()}_PASSWORD")
    hosts = ",".join(f"127.0.0.1:{L.node_ports[n]}" for n in NODES)
    attrs = "prefer-standby" if read_only else "read-write"
    return (
        f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{hosts}/{quote(s.database, safe='')}"
        f"?target_session_attrs={attrs}&connect_timeout=5"
    )


# --- backups after a failover ---------------------------------------------------------------


def basebackup(s: config.Settings) -> tuple[Path, dict[str, Any]]:
    """A verified base backup taken from the standby (pg_basebackup works on a hot standby;
    the primary does no extra work), into ha/basebackups; WAL archiving (ha/wal_archive, by
    whichever node is primary, across failovers) starts with the first one."""
    L = layout(s)
    if not running(s):
        raise HAError("HA is not running (keen-db ha up)")
    primary = primary_name(s)
    standby = next((n for n in NODES if n != primary and _probe(L, n) is not None), None)
    source = standby or primary
    if source is None:
        raise HAError("no node is reachable")
    _owned(L.basebackups)
    marker = L.wal_archive / cluster.ARCHIVE_MARKER
    if not marker.exists():
        _owned_file(marker, "", 0o600)
    started = dt.datetime.now(dt.UTC)
    dest = L.basebackups / started.strftime("%Y%m%dT%H%M%S%fZ")
    env = {"PGPASSWORD": s.secret("postgres")}
    t0 = time.monotonic()
    res = subprocess.run(
        [
            cluster.pg_bin("pg_basebackup"),
            "--pgdata",
            str(dest),
            "--format=plain",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--manifest-checksums=SHA256",
            f"--label=keen-db ha {started.isoformat()}",
            "--dbname",
            f"host=127.0.0.1 port={L.node_ports[source]} user=postgres dbname=postgres",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **L.env(), **env},
        cwd=L.root,
        **_ids(),
    )
    if res.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise HAError(f"pg_basebackup from {source} failed: {(res.stderr or res.stdout).strip()}")
    check = _run(L, [cluster.pg_bin("pg_verifybackup"), str(dest)], check=False)
    if check.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise HAError(f"pg_verifybackup rejected the base backup: {(check.stderr or check.stdout).strip()}")
    info = {
        "source": source,
        "source_role": "secondary" if source == standby else "primary",
        "started_at": started.isoformat(),
        "seconds": round(time.monotonic() - t0, 2),
        "verified": "pg_verifybackup",
    }
    _owned_file(dest.with_suffix(".json"), json.dumps(info, indent=1) + "\n", 0o644)
    return dest, info


# --- the synchronous-replication cost -------------------------------------------------------


def bench_sync(
    s: config.Settings, seconds: int = 10, rounds: int = 3, clients: int = 4, users: int = 1000
) -> dict[str, Any]:
    """deduct_credits TPS on the HA primary with synchronous replication (each commit waits
    for the standby's flush) against the same server with synchronous_commit = local (each
    commit waits for the local flush only: a single node's durability). Same server, same
    data, same pgbench script as keen-db bench's `deduct`, rounds interleaved, medians."""
    from . import bench
    from .backup import _libpq

    db = "keen_ha_bench"
    with _connect(superuser_conninfo(s, "postgres")) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    primary = primary_name(s)
    if primary is None:
        raise HAError("no primary")
    su = layout(s).superuser(primary, db)
    deploy.migrate(su)
    deploy.set_role_passwords(s, su)
    deploy.seed(su)
    fix_login_recorder(s, su)
    with _connect(su) as conn:
        conn.execute(bench.BENCH_OBJECTS)
        bench.seed_users(conn, users)
        conn.execute("VACUUM ANALYZE")
    samples: dict[str, list[float]] = {"sync": [], "local": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "deduct.sql"
        script.write_text(bench.SCRIPTS["deduct"])
        dsn, env = _libpq(conninfo(s, "keen_app", database=db))
        for _ in range(rounds):
            for mode, commit in (("sync", "on"), ("local", "local")):
                res = subprocess.run(
                    [
                        cluster.pg_bin("pgbench"),
                        "-n",
                        "-M",
                        "prepared",
                        "-c",
                        str(clients),
                        "-j",
                        "2",
                        "-T",
                        str(seconds),
                        "-D",
                        f"users={users}",
                        "-f",
                        str(script),
                        dsn,
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **env, "PGOPTIONS": f"-c synchronous_commit={commit}"},
                )
                if res.returncode != 0 or "tps = " not in res.stdout:
                    raise HAError(f"pgbench failed: {(res.stderr or res.stdout).strip()[-1500:]}")
                samples[mode].append(float(res.stdout.split("tps = ")[1].split()[0]))
    with _connect(superuser_conninfo(s, "postgres")) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    ratios = [a / b for a, b in zip(samples["sync"], samples["local"], strict=True)]
    return {
        "ha_sync_deduct_tps": round(statistics.median(samples["sync"]), 1),
        "ha_local_deduct_tps": round(statistics.median(samples["local"]), 1),
        "ratio_sync_vs_single": round(statistics.median(ratios), 3),
        "samples": samples,
        "clients": clients,
        "seconds": seconds,
    }


# --- the CLI --------------------------------------------------------------------------------


def _fail(message: str) -> None:
    click.echo(f"keen-db: {message}", err=True)
    sys.exit(1)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (HAError, cluster.ClusterError, psycopg.Error, subprocess.TimeoutExpired) as exc:
        _fail(str(exc).strip())


def _print_status(nodes: list[dict[str, Any]], as_json: bool) -> None:
    for n in nodes:
        lag = "unknown" if n["lag_bytes"] is None else f"{n['lag_bytes']} bytes"
        click.echo(f"{n['name']}  port {n['port']}  {n['role']:<9}  state {n['state']:<13}  lag {lag}")
    if as_json:
        click.echo(json.dumps({"nodes": nodes}))


@click.group()
def ha() -> None:
    """High availability with pg_auto_failover: a monitor and two nodes under $KEEN_HOME/ha."""


@ha.command("up")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for a healthy formation")
@click.pass_context
def ha_up(ctx: click.Context, timeout: float) -> None:
    """Create (first time) and start the monitor and both nodes; migrate and seed the primary."""
    s = ctx.obj
    with _errors():
        nodes = up(s, click.echo, timeout)
    _print_status(nodes, False)
    click.echo("keen-db HA is ready: `keen-db url` prints the multi-host URL (target_session_attrs=read-write)")


@ha.command("status")
@click.option("--json", "as_json", is_flag=True, help="also print one JSON object on the last line")
@click.pass_context
def ha_status(ctx: click.Context, as_json: bool) -> None:
    """One line per node: name, port, role, state, lag."""
    s = ctx.obj
    if not (s.home / "ha" / "ha.json").exists():
        _fail(f"no HA set-up in {s.home / 'ha'} (keen-db ha up)")
    with _errors():
        _print_status(status(s), as_json)


@ha.command("failover")
@click.option("--timeout", default=120.0, show_default=True)
@click.pass_context
def ha_failover(ctx: click.Context, timeout: float) -> None:
    """A controlled switch of primary and standby; acknowledged commits are kept."""
    s = ctx.obj
    with _errors():
        result = failover(s, timeout)
    click.echo(
        f"{result['from']} -> {result['to']}: promoted in {result['seconds_until_promoted']}s, "
        f"synchronous again in {result['seconds_until_synchronous']}s"
    )


@ha.command("down")
@click.pass_context
def ha_down(ctx: click.Context) -> None:
    """Stop the monitor and both nodes (no process is left)."""
    s = ctx.obj
    with _errors():
        stopped = down(s, click.echo)
    click.echo("stopped" if stopped else "not running")


@ha.command("url")
@click.option("--node", type=click.Choice(NODES), default=None, help="this node (default: the current primary)")
@click.pass_context
def ha_url(ctx: click.Context, node: str | None) -> None:
    """A direct (single-host) superuser URL of one node: for tools that read one host only
    (yoyo, so `keen-db --database-url "$(keen-db ha url)" doctor` or migrate)."""
    s = ctx.obj
    with _errors():
        name = node or primary_name(s)
        if name is None:
            raise HAError("no node serves writes")
        click.echo(config.to_url(layout(s).superuser(name, s.database)))


@ha.command("basebackup")
@click.pass_context
def ha_basebackup(ctx: click.Context) -> None:
    """A verified base backup from the standby into $KEEN_HOME/ha/basebackups."""
    s = ctx.obj
    with _errors():
        dest, info = basebackup(s)
    click.echo(f"base backup {dest} from {info['source']} ({info['source_role']}) in {info['seconds']}s, verified")


@ha.command("bench")
@click.option("--seconds", default=10, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--clients", default=4, show_default=True)
@click.pass_context
def ha_bench(ctx: click.Context, seconds: int, rounds: int, clients: int) -> None:
    """deduct_credits TPS with synchronous replication / with a local commit, on the primary."""
    s = ctx.obj
    with _errors():
        result = bench_sync(s, seconds, rounds, clients)
    click.echo(
        f"deduct_credits: {result['ha_sync_deduct_tps']} tps synchronous, {result['ha_local_deduct_tps']} tps "
        f"local commit: ratio {result['ratio_sync_vs_single']}"
    )
    click.echo(json.dumps(result))


COMMANDS = [ha]
