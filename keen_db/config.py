"""Where things live: $KEEN_HOME, the port, the database name, the generated secrets."""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
DB_DIR = ROOT / "db"
DEFAULT_PORT = 54329
SERVER_USER = "postgres"
# Where a cluster goes when the postgres user cannot reach the checkout (root's 0700 home).
RELOCATED_ROOT = Path("/var/lib/keen-db")
PORT_FILE = "port"


@dataclass(frozen=True)
class Settings:
    home: Path
    port: int
    database: str
    database_url: str | None  # an existing server's superuser URL (KEEN_DATABASE_URL)
    # The default ./.keen the postgres user could not reach, when home was moved from there.
    relocated_from: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_file(self) -> Path:
        return self.home / "log" / "postgres.log"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def wal_archive_dir(self) -> Path:
        return self.home / "wal_archive"

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def on_embedded_server(self) -> bool:
        """True when the database is on this checkout's embedded cluster: no URL, or a URL whose
        host is the loopback or the cluster's socket directory and whose port is the cluster's
        (keen-db's own tests and `keen-db --database-url <a database of the embedded cluster>`)."""
        if self.database_url is None:
            return True
        p = conninfo_to_dict(self.database_url)
        host = str(p.get("host") or "")
        port = int(str(p.get("port") or 5432).split(",")[0])
        return port == self.port and host in ("127.0.0.1", "localhost", "::1", str(self.run_dir))

    def secret(self, name: str, env: str | None = None) -> str:
        """A password: from `env` when set, else generated once and kept in $KEEN_HOME/secrets."""
        if env and os.environ.get(env):
            return os.environ[env]
        path = self.secrets_dir / f"{name}.password"
        if path.exists():
            return path.read_text().strip()
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        value = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return value

    def superuser_url(self, database: str | None = None) -> str:
        if self.database_url:
            return with_database(self.database_url, database) if database else self.database_url
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.secret("postgres"),
            dbname=database or self.database,
        )

    def role_url(self, role: str, database: str | None = None) -> str:
        """A URL for a login role (keen_app, keen_maintenance) on the same server and database."""
        params = conninfo_to_dict(self.superuser_url(database))
        params.update(user=role, password=self.secret(role, env=f"{role.upper()}_PASSWORD"))
        return make_conninfo("", **params)


def with_database(url: str, database: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = database
    return make_conninfo("", **params)


def to_url(conninfo: str) -> str:
    """A libpq conninfo as a postgresql:// URL (what `keen-db url` prints)."""
    from urllib.parse import quote

    p = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    auth = quote(p.get("user", ""), safe="")
    if p.get("password"):
        auth += ":" + quote(p["password"], safe="")
    host = p.get("host", "")
    netloc = f"{auth}@{host}" if auth else host
    if p.get("port"):
        netloc += f":{p['port']}"
    extra = {k: v for k, v in p.items() if k not in {"user", "password", "host", "port", "dbname"}}
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in extra.items())
    return f"postgresql://{netloc}/{quote(p.get('dbname', ''), safe='')}" + (f"?{query}" if query else "")


def reachable_by_server_user(path: Path) -> bool:
    """True when the postgres OS user can search every existing directory on the way to
    `path` (mode bits: owner, group, other; enough for the usual 0700 home). Not root: we run
    the server ourselves, so whatever we can reach it can."""
    if os.geteuid() != 0:
        return True
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        return True
    gids = {pw.pw_gid, *os.getgrouplist(SERVER_USER, pw.pw_gid)}
    for d in [path, *path.parents]:
        try:
            st = d.stat()
        except OSError:
            continue  # not created yet: we create it with a searchable mode
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def default_home() -> tuple[Path, Path | None]:
    """./.keen, or, when the postgres user cannot reach it (and no cluster is there yet), a
    place of its own under /var/lib/keen-db named by a hash of the checkout's path, so two
    checkouts never share one. Returns (home, the unreachable default or None)."""
    home = Path("./.keen").resolve()
    if (home / "pgdata").exists() or reachable_by_server_user(home):
        return home, None
    digest = hashlib.sha256(str(home.parent).encode()).hexdigest()[:12]
    return RELOCATED_ROOT / digest, home


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_port(home: Path) -> int:
    """KEEN_PORT; else the port recorded in $KEEN_HOME/port when the cluster was created;
    else 54329, or, for a cluster not created yet while 54329 is taken (another checkout's
    cluster), a free port that `keen-db up` records when it creates the cluster."""
    if os.environ.get("KEEN_PORT"):
        return int(os.environ["KEEN_PORT"])
    recorded = home / PORT_FILE
    try:
        return int(recorded.read_text().strip())
    except (OSError, ValueError):
        pass
    if not (home / "pgdata" / "PG_VERSION").exists() and port_in_use(DEFAULT_PORT):
        return free_port()
    return DEFAULT_PORT


def load(database_url: str | None = None) -> Settings:
    url = database_url or os.environ.get("KEEN_DATABASE_URL") or None
    relocated_from = None
    if os.environ.get("KEEN_HOME"):
        home = Path(os.environ["KEEN_HOME"]).resolve()
    else:
        home, relocated_from = default_home()
    return Settings(
        home=home,
        port=load_port(home),
        database=str((conninfo_to_dict(url).get("dbname") if url else None) or os.environ.get("KEEN_DB", "keen")),
        database_url=url,
        relocated_from=relocated_from,
    )
