"""`keen-db demo`: a walkthrough of keen-db as it stands, one area after another.

Each area module in this package exposes `run(ctx: DemoContext)`; STEPS fixes their order.
The walkthrough runs against its own fresh database (keen_demo) on the same server, so it can
be repeated and never touches the data of the `keen` database.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import click
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from keen_client import Keen, PoolSettings
from keen_client.client import Tx

from .. import cluster, config, deploy

STEPS = (
    "keen_db.demo.users",
    "keen_db.demo.credits",
    "keen_db.demo.sessions",
    "keen_db.demo.streaming",
    "keen_db.demo.analytics",
    "keen_db.demo.ops",
)
DEMO_DATABASE = "keen_demo"


class DemoKeen(Keen):
    """The demo's client: keen.act_as refuses the admin (42501), so as_user(<the admin>) goes
    through a real credential: the admin signs in once (start_login_session with ADMIN_PASSWORD,
    the seed's default on the embedded cluster) and works with an API key it makes then."""

    admin_id: UUID | None = None
    admin_key: str | None = None

    def _admin_key(self, user_id: UUID | str) -> str | None:
        if self.admin_id is None:
            with self.transaction() as tx:
                self.admin_id = tx.scalar(
                    "SELECT user_id FROM keen.start_login_session(%s, %s, NULL, '127.0.0.1', 'keen-db demo')",
                    (
                        os.environ.get("ADMIN_EMAIL", "ahiya.butman@gmail.com"),
                        os.environ.get("ADMIN_PASSWORD", "2con-creator"),
                    ),
                )
                self.admin_key = tx.scalar("SELECT token FROM keen.create_api_key('keen-db demo: the admin')")
        return self.admin_key if str(user_id) == str(self.admin_id) else None

    @contextmanager
    def as_user(self, user_id: UUID | str) -> Iterator[Tx]:
        key = self._admin_key(user_id)
        with self.with_api_key(key) if key else super().as_user(user_id) as tx:
            yield tx


@dataclass
class DemoContext:
    settings: config.Settings
    database: str
    keen: Keen
    console: Console
    state: dict[str, Any] = field(default_factory=dict)  # ids passed from one step to the next

    def step(self, title: str) -> None:
        self.console.rule(f"[bold cyan]{title}")

    def say(self, text: str) -> None:
        self.console.print(text)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[str(v) for v in r])
        self.console.print(t)

    def superuser_url(self) -> str:
        return self.settings.superuser_url(self.database)

    def maintenance_url(self) -> str:
        return self.settings.role_url("keen_maintenance", self.database)


def _fresh_demo_database(s: config.Settings) -> None:
    with psycopg.connect(s.superuser_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
    deploy.deploy(s, DEMO_DATABASE)


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Walk through keen-db's main features, printing each step."""
    from ..doctor import run_checks

    s: config.Settings = ctx.obj
    # Piped output (make demo | tee, CI logs) gets room for the wide tables instead of 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=132)
    try:
        cluster.ensure_running(s)
    except cluster.ClusterError as exc:
        click.echo(f"keen-db: {exc}", err=True)
        sys.exit(1)
    console.rule("[bold]keen-db demo")
    console.print(f"A fresh database [bold]{DEMO_DATABASE}[/] on the server, migrated and seeded.")
    _fresh_demo_database(s)
    keen = DemoKeen(s.role_url("keen_app", DEMO_DATABASE), PoolSettings(min_size=1, max_size=8))
    demo_ctx = DemoContext(s, DEMO_DATABASE, keen, console)
    try:
        for name in STEPS:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name).run(demo_ctx)
    finally:
        keen.close()
    demo_ctx.step("The doctor's verdict")
    failures = 0
    for check, ok, detail in run_checks(
        config.Settings(s.home, s.port, DEMO_DATABASE, s.superuser_url(DEMO_DATABASE) if not s.embedded else None)
    ):
        console.print(f"{'[green]ok  [/]' if ok else '[red]FAIL[/]'} {check}{': ' + detail if detail else ''}")
        failures += 0 if ok else 1
    if failures:
        sys.exit(1)


COMMANDS = [demo]
