"""The embedded PostgreSQL cluster under $KEEN_HOME, run as the `postgres` OS user.

initdb and postgres refuse to run as root, so when we are root every server command goes
through `runuser -u postgres`; the data, socket and log directories belong to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from .config import PORT_FILE, RELOCATED_ROOT, Settings, free_port, port_in_use

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"


class ClusterError(RuntimeError):
    pass


def pg_bin(name: str) -> str:
    for d in PG_BIN_CANDIDATES:
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        raise ClusterError(f"{name} not found: install postgresql-15 (make demo does)")
    return found


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *cmd]
    return cmd


def _server_uid_gid() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    pw = pwd.getpwnam(SERVER_USER)
    return pw.pw_uid, pw.pw_gid


def _run(cmd: list[str], check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a server program as the server user; `env` adds variables (e.g. PGPASSWORD: never
    on the command line, where `ps` shows it)."""
    res = subprocess.run(
        _as_server_user(cmd), capture_output=True, text=True, env={**os.environ, **env} if env else None
    )
    if check and res.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def _check_reachable(path: Path) -> None:
    """Every parent must be searchable by the server user, or postgres cannot open its files."""
    if os.geteuid() != 0:
        return
    res = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-x", str(path)], capture_output=True)
    if res.returncode != 0:
        raise ClusterError(
            f"the postgres user cannot reach {path}: a parent directory is not searchable by it; "
            f"set KEEN_HOME to a path it can reach (e.g. /var/tmp/keen)"
        )


def _owned_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = _server_uid_gid()
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def initialised(s: Settings) -> bool:
    return (s.data_dir / "PG_VERSION").exists()


def init(s: Settings) -> None:
    """initdb (first time only) with scram authentication and our settings file; records the
    port in $KEEN_HOME/port (so a port picked because 54329 was taken stays this cluster's)."""
    if s.relocated_from is not None:
        RELOCATED_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(RELOCATED_ROOT, 0o711)
    s.home.mkdir(parents=True, exist_ok=True)
    os.chmod(s.home, 0o711)
    if not os.environ.get("KEEN_PORT"):
        (s.home / PORT_FILE).write_text(f"{s.port}\n")
    _check_reachable(s.home)
    superuser_password = s.secret("postgres")
    _owned_dir(s.data_dir, 0o700)
    _owned_dir(s.run_dir, 0o755)
    _owned_dir(s.log_file.parent, 0o755)
    _owned_dir(s.wal_archive_dir, 0o700)
    uid, gid = _server_uid_gid()
    with tempfile.NamedTemporaryFile("w", dir=s.run_dir, delete=False) as fh:
        fh.write(superuser_password + "\n")
        pwfile = fh.name
    os.chown(pwfile, uid, gid)
    os.chmod(pwfile, 0o600)
    try:
        _run(
            [
                pg_bin("initdb"),
                "-D",
                str(s.data_dir),
                "-U",
                SERVER_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",
            ]
        )
    finally:
        os.unlink(pwfile)
    conf = s.data_dir / "postgresql.conf"
    with open(conf, "a") as fh:
        fh.write("\ninclude_if_exists = 'keen.conf'\n")


ARCHIVE_MARKER = ".enabled"


def archive_command(archive: Path) -> str:
    """Compress each finished WAL segment into `archive` (segments closed early by
    archive_timeout are mostly zeros and shrink to a few KB), but only once a base backup was
    taken (`keen-db basebackup` creates the marker file first): without one there is nothing to
    replay WAL onto, and a busy dev cluster writes gigabytes of it. Idempotent: a segment
    already archived with the same content counts as done (after a crash PostgreSQL may retry
    one), a different one fails loudly. The copy is synced before it is renamed into place."""
    return (
        f'[ -f "{archive}/{ARCHIVE_MARKER}" ] || exit 0; f="{archive}/%f.gz"; '
        f'if [ -f "$f" ]; then gzip -dc "$f" | cmp -s - "%p"; '
        f'else gzip -1 -c "%p" > "$f.part" && sync "$f.part" && mv "$f.part" "$f"; fi'
    )


def restore_command(archive: Path) -> str:
    """The inverse of archive_command (plain copies from older set-ups are read too)."""
    return f'if [ -f "{archive}/%f.gz" ]; then gzip -dc "{archive}/%f.gz" > "%p"; else cp "{archive}/%f" "%p"; fi'


def pg_cron_available() -> bool:
    """Debian's postgresql-15-cron is installed (the server can load pg_cron)."""
    try:
        lib = Path(pg_bin("postgres")).resolve().parent.parent / "lib" / "pg_cron.so"
    except ClusterError:
        return False
    return lib.exists()


def preload_libraries() -> str:
    return "pg_stat_statements,pg_cron" if pg_cron_available() else "pg_stat_statements"


def pg_cron_conf(s: Settings) -> str:
    """pg_cron's settings (keen_db/jobs.py schedules the jobs). Its own tables live in the
    `postgres` database, not in keen's: a pg_dump of the keen database (keen-db backup) then
    holds no pg_cron extension, which could not be restored into a database of another name.
    Jobs target the keen database (cron.schedule_in_database) and run in background workers as
    their user (no password, no loopback connection)."""
    if not pg_cron_available():
        return ""
    return (
        "cron.database_name = 'postgres'\n"
        "cron.use_background_workers = on\n"
        "cron.max_running_jobs = 4\n"
        "max_worker_processes = 16\n"
        "cron.log_min_messages = warning\n"
    )


def write_conf(s: Settings) -> None:
    """keen.conf: rewritten on every start so the port and paths follow the environment.
    keen.recovery.conf (written only by a point-in-time recovery, see keen_db.backup) is
    included last."""
    archive = s.wal_archive_dir
    text = f"""# written by keen-db up; edit KEEN_PORT / KEEN_HOME instead
port = {s.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{s.run_dir}'
max_connections = 200
shared_buffers = 256MB
synchronous_commit = on
fsync = on
full_page_writes = on
wal_compression = lz4
wal_level = replica
archive_mode = on
archive_command = '{archive_command(archive)}'
archive_timeout = 60
max_wal_senders = 4
shared_preload_libraries = '{preload_libraries()}'
pg_stat_statements.track = top
log_min_messages = warning
log_line_prefix = '%m [%p] %u@%d '
timezone = 'UTC'
{pg_cron_conf(s)}include_if_exists = 'keen.recovery.conf'
"""
    path = s.data_dir / "keen.conf"
    uid, gid = _server_uid_gid()
    path.write_text(text)
    os.chown(path, uid, gid)


def _process_state(pid: int) -> str | None:
    """The State letter of /proc/<pid>/status (R, S, D, Z, X, ...), None when there is no such process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except (OSError, IndexError):
        return None
    return None


def postmaster_pid(s: Settings) -> int | None:
    """The pid in postmaster.pid, when the file is there and readable."""
    try:
        return int((s.data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_live_postmaster(pid: int, data_dir: Path) -> bool:
    """A live (not zombie, not dead) postgres process working in `data_dir`: the postmaster
    chdirs into its data directory; a zombie has no cwd, a reused pid another program's."""
    if _process_state(pid) in (None, "Z", "X"):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return comm in ("postgres", "postmaster") and cwd == str(data_dir.resolve())


def running(s: Settings) -> bool:
    """True only for a live postmaster of this data directory. `pg_ctl status` is not enough:
    it calls a killed postmaster that its parent has not reaped yet (a zombie, as in any
    container whose PID 1 does not reap) running, and `up` would skip the start."""
    if not initialised(s):
        return False
    pid = postmaster_pid(s)
    return pid is not None and _is_live_postmaster(pid, s.data_dir)


def _cluster_on_port(port: int) -> str | None:
    """The data directory of another running PostgreSQL that listens on `port`, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            cwd = Path(os.readlink(proc / "cwd"))
            lines = (cwd / "postmaster.pid").read_text().splitlines()
        except OSError:
            continue
        if len(lines) > 3 and lines[0].strip() == proc.name and lines[3].strip() == str(port):
            return str(cwd)
    return None


def check_port_free(s: Settings) -> None:
    """Before starting: the port must be free; say who holds it and what to set."""
    if not port_in_use(s.port):
        return
    other = _cluster_on_port(s.port)
    who = f"another PostgreSQL cluster (data directory {other})" if other else "another program"
    raise ClusterError(
        f"port {s.port} on 127.0.0.1 is in use by {who}; set KEEN_PORT to a free port "
        f"(e.g. KEEN_PORT={free_port()} keen-db up) or stop that server"
    )


def _orphans(s: Settings) -> list[int]:
    """Server processes still working in the data directory (every postgres process chdirs
    there): after the postmaster is killed its backends live on for a moment."""
    data = str(s.data_dir.resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") == data:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _clear_stale_pid(s: Settings, grace: float = 15.0) -> None:
    """After a crash postmaster.pid names a dead postmaster (or a pid reused by another
    program). PostgreSQL ignores a pid file whose process is gone, but refuses to start while
    backends of the dead postmaster still hold its shared memory: wait for them to exit (they
    notice the postmaster's death by themselves), then SIGQUIT the stragglers, as the
    postmaster would have. A pid reused by a program working elsewhere: remove the file."""
    # The socket's lock file names the postmaster too, and PostgreSQL refuses to start while
    # that pid exists, which a zombie still does: remove the lock of a postmaster that is gone.
    for lock in s.run_dir.glob(".s.PGSQL.*.lock"):
        try:
            holder = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            holder = None
        if holder is None or not _is_live_postmaster(holder, s.data_dir):
            lock.unlink(missing_ok=True)
    pidfile = s.data_dir / "postmaster.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (ValueError, IndexError):
        pidfile.unlink()
        return
    if not _is_live_postmaster(pid, s.data_dir):
        pidfile.unlink()  # dead, a zombie, or the pid now belongs to another program
    deadline = time.monotonic() + grace
    signalled = False
    while orphans := _orphans(s):
        if time.monotonic() > deadline:
            if signalled:
                raise ClusterError(
                    f"processes of a crashed server still run in {s.data_dir}: "
                    f"pids {orphans}; stop them, then run keen-db up again"
                )
            for orphan in orphans:
                try:
                    os.kill(orphan, signal.SIGQUIT)
                except ProcessLookupError:
                    pass
            signalled, deadline = True, time.monotonic() + grace
        time.sleep(0.1)


def start(s: Settings, timeout: int = 60) -> None:
    if running(s):
        return
    _clear_stale_pid(s)
    check_port_free(s)
    write_conf(s)
    res = _run(
        [pg_bin("pg_ctl"), "start", "-D", str(s.data_dir), "-l", str(s.log_file), "-w", "-t", str(timeout)], check=False
    )
    if res.returncode != 0:
        tail = ""
        if s.log_file.exists():
            tail = "\n".join(s.log_file.read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(f"postgres did not start: {res.stderr.strip() or res.stdout.strip()}\n{tail}")
    wait_ready(s, timeout)


def wait_ready(s: Settings, timeout: int = 60) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(s.superuser_url("postgres"), connect_timeout=3):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.3)
    raise ClusterError(f"postgres is not accepting connections: {last}")


def stop(s: Settings, mode: str = "fast") -> bool:
    if not running(s):
        return False
    _run([pg_bin("pg_ctl"), "stop", "-D", str(s.data_dir), "-m", mode, "-w"])
    return True


def ensure_database(s: Settings, name: str | None = None) -> None:
    name = name or s.database
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def ensure_running(s: Settings) -> None:
    """Create (once) and start the embedded cluster; a no-op when it already runs."""
    if not s.embedded:
        return
    if s.relocated_from is not None:
        print(
            f"keen-db: the postgres user cannot reach {s.relocated_from}; the cluster lives in {s.home} "
            f"(set KEEN_HOME to choose another place)",
            file=sys.stderr,
        )
    try:
        if not initialised(s):
            init(s)
        start(s)
    except OSError as exc:  # KEEN_HOME cannot be created or written
        raise ClusterError(
            f"cannot use KEEN_HOME={s.home}: {exc.strerror or exc}; "
            f"set KEEN_HOME to a writable directory the postgres user can reach"
        ) from exc


PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_bin() -> str | None:
    for p in PGBOUNCER_CANDIDATES:
        if Path(p).exists():
            return p
    return shutil.which("pgbouncer")


@dataclass
class PgBouncer:
    """A PgBouncer in transaction pooling in front of the embedded cluster (tests, bench)."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes]

    def url(self, conninfo: str) -> str:
        """`conninfo` (a URL on the cluster) redirected through this PgBouncer."""
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        params.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo("", **params)

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def pgbouncer_ini(s: Settings, workdir: Path, port: int, pool_size: int) -> str:
    """A transaction-pooling PgBouncer for every database of the cluster; clients and the
    server authenticate with scram-sha-256 (auth_file holds the login roles' passwords).
    Clients reach it over TCP; it reaches PostgreSQL over the cluster's unix socket (as on a
    database host: no TCP stack on that hop). server_reset_query is not run in transaction
    pooling (server_reset_query_always = 0, the default)."""
    return f"""[databases]
* = host={s.run_dir} port={s.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""


def start_pgbouncer(
    s: Settings, roles: tuple[str, ...] = ("keen_app",), pool_size: int = 20, timeout: float = 15.0
) -> PgBouncer:
    """Start PgBouncer (Debian's package) as the postgres user (it refuses root) on a free
    port, in a directory of its own under /var/tmp; stop it with PgBouncer.stop()."""
    binary = pgbouncer_bin()
    if binary is None:
        raise ClusterError("pgbouncer not found: install the Debian package pgbouncer (make system does)")
    workdir = Path(tempfile.mkdtemp(prefix="keen_pgbouncer_", dir="/var/tmp"))
    uid, gid = _server_uid_gid()
    port = free_port()
    users = "".join(f'"{role}" "{s.secret(role, env=f"{role.upper()}_PASSWORD")}"\n' for role in roles)
    (workdir / "userlist.txt").write_text(users)
    (workdir / "pgbouncer.ini").write_text(pgbouncer_ini(s, workdir, port, pool_size))
    for path in (workdir, workdir / "userlist.txt", workdir / "pgbouncer.ini"):
        os.chown(path, uid, gid)
    os.chmod(workdir, 0o700)
    os.chmod(workdir / "userlist.txt", 0o600)
    as_server = {"user": uid, "group": gid, "extra_groups": []} if os.geteuid() == 0 else {}
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        **as_server,  # type: ignore[call-overload]
    )
    bouncer = PgBouncer(workdir, port, process)
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        if process.poll() is not None or time.monotonic() > deadline:
            log = bouncer.log()
            bouncer.stop()
            raise ClusterError(f"pgbouncer did not start: {log[-1500:]}")
        time.sleep(0.05)
    return bouncer
