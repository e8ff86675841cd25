"""Where things live: $KEEN_HOME, the port, the database name, the generated secrets."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
DB_DIR = ROOT / "db"


@dataclass(frozen=True)
class Settings:
    home: Path
    port: int
    database: str
    database_url: str | None  # an existing server's superuser URL (KEEN_DATABASE_URL)

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

    p = conninfo_to_dict(conninfo)
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


def load(database_url: str | None = None) -> Settings:
    home = Path(os.environ.get("KEEN_HOME", "./.keen")).resolve()
    url = database_url or os.environ.get("KEEN_DATABASE_URL") or None
    return Settings(
        home=home,
        port=int(os.environ.get("KEEN_PORT", "54329")),
        database=(conninfo_to_dict(url).get("dbname") if url else None) or os.environ.get("KEEN_DB", "keen"),
        database_url=url,
    )
