"""The keen-db command line (click). Every command takes --database-url (default
KEEN_DATABASE_URL, else the embedded cluster under $KEEN_HOME)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from . import cluster, config, deploy

# Commands that live with their area (backup/restore, bench, rollup, demo); each module
# exposes COMMANDS, a list of click commands.
COMMAND_MODULES = (
    "keen_db.backup",
    "keen_db.bench",
    "keen_db.rollup",
    "keen_db.demo",
    "keen_db.ha",
    "keen_db.schema_file",
    "keen_db.jobs",
)


def _settings(ctx: click.Context) -> config.Settings:
    return ctx.obj


def _fail(message: str) -> None:
    click.echo(f"keen-db: {message}", err=True)
    sys.exit(1)


@click.group()
@click.option(
    "--database-url",
    envvar="KEEN_DATABASE_URL",
    default=None,
    help="superuser URL of an existing server (default: the embedded cluster)",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """keen-db: the database layer of keen."""
    ctx.obj = config.load(database_url)


def ensure_ready(s: config.Settings) -> None:
    """Start the embedded cluster if needed; a clear error (exit 1) when it cannot."""
    try:
        cluster.ensure_running(s)
    except cluster.ClusterError as exc:
        _fail(str(exc))


@cli.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Create (first time) and start the embedded cluster, migrate and seed."""
    s = _settings(ctx)
    ensure_ready(s)
    try:
        applied = deploy.deploy(s)
    except Exception as exc:
        _fail(f"deploy failed: {exc}")
    where = f"{s.home} (port {s.port})" if s.embedded else "the server at KEEN_DATABASE_URL"
    click.echo(f"keen-db is ready: database {s.database!r} on {where}; {len(applied)} migration(s) applied")
    if s.embedded:
        from .jobs import install as install_jobs

        try:
            click.echo(install_jobs(s))
        except Exception as exc:  # upkeep scheduling must not make a ready database fail `up`
            click.echo(f"keen-db: upkeep jobs not scheduled: {exc}", err=True)


@cli.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the embedded cluster."""
    s = _settings(ctx)
    if not s.embedded:
        _fail("down manages only the embedded cluster (KEEN_DATABASE_URL is set)")
    try:
        stopped = cluster.stop(s)
    except cluster.ClusterError as exc:
        _fail(str(exc))
    click.echo("stopped" if stopped else "not running")


@cli.command()
@click.option("--superuser", is_flag=True, help="a URL that logs in as a superuser")
@click.option("--maintenance", is_flag=True, help="a URL that logs in as keen_maintenance")
@click.option("--read-only", is_flag=True, help="while HA runs: a URL that prefers the standby")
@click.pass_context
def url(ctx: click.Context, superuser: bool, maintenance: bool, read_only: bool) -> None:
    """Print a libpq URL for keen_app (or a superuser / the maintenance role); while
    `keen-db ha` runs, a multi-host URL over both nodes (see keen_db.ha)."""
    s = _settings(ctx)
    from . import ha

    if ha.running(s):
        role = "postgres" if superuser else "keen_maintenance" if maintenance else "keen_app"
        click.echo(ha.url(s, role, read_only))
        return
    if superuser:
        click.echo(config.to_url(s.superuser_url()))
    else:
        click.echo(config.to_url(s.role_url("keen_maintenance" if maintenance else "keen_app")))


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply pending migrations, then re-apply every function and policy file."""
    s = _settings(ctx)
    ensure_ready(s)
    cluster.ensure_database(s)
    applied = deploy.migrate(s.superuser_url())
    deploy.set_role_passwords(s, s.superuser_url())
    click.echo(
        f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}; "
        f"functions and policies re-applied"
    )


@cli.command()
@click.option("--count", default=1, show_default=True, help="how many migrations to roll back")
@click.option("--all", "all_", is_flag=True, help="roll back every migration (an empty database)")
@click.pass_context
def rollback(ctx: click.Context, count: int, all_: bool) -> None:
    """Roll back the last migration(s)."""
    s = _settings(ctx)
    ensure_ready(s)
    done = deploy.rollback(s.superuser_url(), None if all_ else count)
    click.echo(f"rolled back {len(done)} migration(s){': ' + ', '.join(done) if done else ''}")


@cli.command()
@click.pass_context
def seed(ctx: click.Context) -> None:
    """Seed the admin user (idempotent)."""
    s = _settings(ctx)
    ensure_ready(s)
    try:
        deploy.seed(s.superuser_url(), deploy.default_password_allowed(s))
    except ValueError as exc:
        _fail(str(exc))
    click.echo("seeded the admin user")


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Shell-first validation: one line per check, exit 1 if any fails."""
    from .doctor import run_checks

    s = _settings(ctx)
    failures = 0
    for name, ok, detail in run_checks(s):
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        failures += 0 if ok else 1
    if failures:
        click.echo(f"{failures} check(s) failed", err=True)
        sys.exit(1)


for _module in COMMAND_MODULES:
    if importlib.util.find_spec(_module) is not None:
        for _command in importlib.import_module(_module).COMMANDS:
            cli.add_command(_command)


def main() -> None:
    cli()
