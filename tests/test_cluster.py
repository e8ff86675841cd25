"""The embedded cluster through the CLI: up is idempotent, recovers after a crash, down stops
it, url prints one line, and a KEEN_HOME the server cannot use is a clear error. Each test runs
its own cluster under /var/tmp on a free port: the shared cluster is never touched."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from keen_db import cluster

from .embedded import Embedded, new_cluster


@pytest.fixture(scope="module")
def embedded():
    e = new_cluster("cluster")
    e.cli("up")
    yield e
    e.destroy()


def test_up_twice_is_a_no_op_that_exits_zero(embedded):
    res = embedded.cli("up")
    assert res.returncode == 0
    assert "0 migration(s) applied" in res.stdout
    with embedded.su() as conn:
        assert conn.execute("SELECT count(*) FROM keen.users WHERE role = 'super_admin'").fetchone()[0] == 1


def test_url_prints_one_line_that_logs_in_as_keen_app(embedded):
    out = embedded.cli("url").stdout
    assert out.count("\n") == 1 and out.startswith("postgresql://keen_app:")
    with psycopg.connect(out.strip()) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "keen_app"
    su = embedded.cli("url", "--superuser").stdout
    assert su.count("\n") == 1
    with psycopg.connect(su.strip()) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]


def test_up_after_a_killed_postmaster_recovers(embedded):
    with embedded.su() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.crash_probe (n int)")
        conn.execute("INSERT INTO public.crash_probe VALUES (1)")
    pid = embedded.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not cluster.running(embedded.settings)
    assert (embedded.settings.data_dir / "postmaster.pid").exists()  # stale, left by the crash
    embedded.cli("up")
    with embedded.su() as conn:
        assert conn.execute("SELECT count(*) FROM public.crash_probe").fetchone()[0] == 1
    log = embedded.settings.log_file.read_text()
    assert "database system was interrupted" in log or "not properly shut down" in log


def test_down_stops_the_cluster_and_up_starts_it_again(embedded):
    assert embedded.cli("down").stdout.strip() == "stopped"
    assert not cluster.running(embedded.settings)
    assert embedded.cli("down").stdout.strip() == "not running"
    embedded.cli("up")
    assert cluster.running(embedded.settings)


def test_a_keen_home_the_server_cannot_use_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    e = Embedded(blocker / "keen", 1)
    res = e.cli("up", check=False)
    assert res.returncode == 1
    assert "cannot use KEEN_HOME" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a directory the postgres user cannot enter")
def test_a_keen_home_the_postgres_user_cannot_reach_is_a_clear_error(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    e = Embedded(private / "keen", 1)
    res = e.cli("up", check=False)
    assert res.returncode == 1
    assert "the postgres user cannot reach" in res.stderr and "Traceback" not in res.stderr


def test_a_port_taken_by_another_cluster_is_named_before_starting(embedded, tmp_path):
    """Issue 14: a second checkout on the port of a running cluster: up says which cluster
    holds the port and what to set, instead of PostgreSQL's own log lines."""
    other = Embedded(Path(str(embedded.home) + "-second"), embedded.port)
    try:
        res = other.cli("up", check=False)
        assert res.returncode == 1
        assert f"port {embedded.port}" in res.stderr and str(embedded.settings.data_dir) in res.stderr
        assert "KEEN_PORT" in res.stderr and "Traceback" not in res.stderr
    finally:
        other.destroy()


def test_a_new_cluster_on_the_default_port_picks_a_free_one_when_it_is_taken(tmp_path):
    """With no KEEN_PORT and 54329 taken, a cluster not created yet gets a free port, which
    its creation records in $KEEN_HOME/port for every later command."""
    import socket

    from keen_db import config

    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    env_port = os.environ.pop("KEEN_PORT", None)
    try:
        with socket.socket() as busy:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                busy.bind(("127.0.0.1", config.DEFAULT_PORT))
                busy.listen()
            except OSError:
                pass  # already taken (the shared cluster): the same situation
            picked = config.load_port(home)
            assert picked != config.DEFAULT_PORT
            (home / config.PORT_FILE).write_text(f"{picked}\n")
            assert config.load_port(home) == picked
    finally:
        if env_port is not None:
            os.environ["KEEN_PORT"] = env_port


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a directory the postgres user cannot enter")
def test_a_checkout_the_postgres_user_cannot_reach_gets_its_cluster_in_a_reachable_place(tmp_path):
    """Issue 14: root clones into a 0700 home and runs keen-db up with no KEEN_HOME: the
    cluster goes to /var/lib/keen-db/<hash of the checkout path> and the output says where."""
    import hashlib

    from keen_db import config
    from keen_db.backup import free_port

    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    checkout = private / "keen-db"
    checkout.mkdir()
    expected = config.RELOCATED_ROOT / hashlib.sha256(str(checkout).encode()).hexdigest()[:12]
    env = {k: v for k, v in os.environ.items() if k not in ("KEEN_HOME", "KEEN_DATABASE_URL")}
    env["KEEN_PORT"] = str(free_port())
    import subprocess

    from .embedded import KEEN_DB

    try:
        res = subprocess.run([KEEN_DB, "up"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert str(expected) in res.stderr and "cannot reach" in res.stderr
        url = subprocess.run([KEEN_DB, "url"], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
        with psycopg.connect(url.stdout.strip()) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "keen_app"
        assert not (checkout / ".keen" / "pgdata").exists()
    finally:
        Embedded(expected, int(env["KEEN_PORT"])).destroy()
