"""Test harness: every test runs against a real PostgreSQL (the embedded cluster, or the server
at KEEN_DATABASE_URL). The schema is built once per run into a template database; each test
that asks for `db` gets a fresh copy (CREATE DATABASE ... TEMPLATE), dropped afterwards."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from keen_client import Keen, PoolSettings
from keen_client.client import Tx
from keen_db import cluster, config, deploy

_counter = itertools.count()


@dataclass(frozen=True)
class Database:
    """A throwaway keen database and the URLs of its roles."""

    name: str
    superuser_url: str
    app_url: str
    maintenance_url: str

    def su(self) -> psycopg.Connection:
        """An autocommit superuser connection (for inspection and set-up only)."""
        return psycopg.connect(self.superuser_url, autocommit=True)


def _admin_conn(s: config.Settings) -> psycopg.Connection:
    return psycopg.connect(s.superuser_url("postgres"), autocommit=True)


def create_database(s: config.Settings, name: str, template: str | None = None) -> None:
    with _admin_conn(s) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(s: config.Settings, name: str) -> None:
    with _admin_conn(s) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_info(s: config.Settings, name: str) -> Database:
    return Database(name, s.superuser_url(name), s.role_url("keen_app", name), s.role_url("keen_maintenance", name))


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    s = config.load()
    cluster.ensure_running(s)
    return s


ADMIN_EMAIL = os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com")
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "2con-creator")
_admin_credential: dict[str, str] = {}


def sign_in_admin(app_url: str) -> str:
    """The admin acts only through a credential (keen.act_as refuses it, 42501): sign the seeded
    admin in for real (start_login_session with its password), and with that access token make
    an API key (bypass_limits: the admin's keys are never rate limited). Returns the key."""
    with psycopg.connect(app_url) as conn:
        access = conn.execute(
            "SELECT access_token FROM keen.start_login_session(%s, %s, NULL, '127.0.0.1')",
            (ADMIN_EMAIL, ADMIN_PASSWORD),
        ).fetchone()[0]
    with psycopg.connect(app_url) as conn:
        conn.execute("SELECT keen.authenticate_access_token(%s)", (access,))
        return conn.execute("SELECT token FROM keen.create_api_key('tests: the admin', '{}')").fetchone()[0]


def act_as_admin(conn: psycopg.Connection) -> None:
    """Makes the admin the actor of `conn`'s transaction through its API key (tests' helper for
    raw connections; keen.as_user(admin_id) does the same for the client)."""
    conn.execute("SELECT keen.authenticate_api_key(%s)", (_admin_credential["key"],))


@pytest.fixture(scope="session")
def template_db(settings: config.Settings):
    """A migrated, seeded database that each test copies. bcrypt is cheapened here (cost 4)
    because tests register many users; test_users proves the shipped default is 12. The admin
    signs in once here; its API key (copied with the template) is every test's admin credential."""
    name = f"keen_tpl_{os.getpid()}"
    create_database(settings, name)
    deploy.migrate(settings.superuser_url(name))
    deploy.set_role_passwords(settings, settings.superuser_url(name))
    deploy.seed(settings.superuser_url(name))
    with psycopg.connect(settings.superuser_url(name), autocommit=True) as conn:
        conn.execute("UPDATE keen.settings SET value = '4' WHERE key = 'bcrypt_cost'")
        _admin_credential["id"] = str(
            conn.execute("SELECT id FROM keen.users WHERE email = pg_catalog.lower(%s)", (ADMIN_EMAIL,)).fetchone()[0]
        )
    _admin_credential["key"] = sign_in_admin(settings.role_url("keen_app", name))
    yield name
    drop_database(settings, name)


@pytest.fixture
def admin_key(template_db: str) -> str:
    """The admin's API key (bypass_limits, no scopes), made by a real sign-in in template_db."""
    return _admin_credential["key"]


class TestKeen(Keen):
    """keen_client.Keen for tests: as_user(<the admin>) goes through the admin's real API key
    (keen.act_as refuses an admin), every other user through act_as as usual."""

    __test__ = False

    def _is_admin(self, user_id: uuid.UUID | str) -> bool:
        return str(user_id) == _admin_credential.get("id")

    @contextmanager
    def as_user(self, user_id: uuid.UUID | str) -> Iterator[Tx]:
        if self._is_admin(user_id):
            with self.with_api_key(_admin_credential["key"]) as tx:
                yield tx
        else:
            with super().as_user(user_id) as tx:
                yield tx

    @contextmanager
    def read_as_user(self, user_id: uuid.UUID | str) -> Iterator[Tx]:
        if self._is_admin(user_id):
            with self.with_api_key(_admin_credential["key"]) as tx:
                yield tx
        else:
            with super().read_as_user(user_id) as tx:
                yield tx


def fresh_database(settings: config.Settings, template: str) -> Database:
    name = f"keen_t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    create_database(settings, name, template)
    return database_info(settings, name)


@pytest.fixture
def db(settings: config.Settings, template_db: str):
    """A fresh keen database for this test."""
    database = fresh_database(settings, template_db)
    yield database
    drop_database(settings, database.name)


@pytest.fixture
def keen(db: Database):
    """A pooled client on the test database, as keen_app."""
    client = TestKeen(db.app_url, PoolSettings(min_size=1, max_size=20, timeout=30))
    yield client
    client.close()


@pytest.fixture
def admin_id(db: Database) -> uuid.UUID:
    with db.su() as conn:
        return conn.execute("SELECT id FROM keen.users WHERE role = 'super_admin'").fetchone()[0]


def assert_ledger_clean(db: Database) -> None:
    """Every test that moves money ends here: each balance equals the sum of its ledger."""
    with psycopg.connect(db.maintenance_url) as conn:
        bad = conn.execute("SELECT user_id, balance, ledger_sum FROM keen.verify_ledger() WHERE NOT ok").fetchall()
    assert bad == [], f"ledger out of balance: {bad}"


@pytest.fixture
def make_user(keen: Keen):
    """Registers users through keen.register_user: make_user() -> id, unique names each call."""

    def _make(prefix: str = "user", password: str = "correct horse battery") -> uuid.UUID:
        tag = f"{prefix}{next(_counter)}_{uuid.uuid4().hex[:6]}"
        with keen.transaction() as tx:
            return tx.scalar("SELECT id FROM keen.register_user(%s, %s, %s)", (f"{tag}@example.com", tag, password))

    return _make
