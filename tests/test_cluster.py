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
