"""A throwaway embedded cluster of its own (KEEN_HOME under /var/tmp, a free port), for the
tests that kill, stop or copy a whole cluster: the shared one is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from keen_db import cluster, config
from keen_db.backup import free_port

KEEN_DB = str(Path(sys.executable).parent / "keen-db")


@dataclass
class Embedded:
    home: Path
    port: int

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KEEN_DATABASE_URL"}
        return {**env, "KEEN_HOME": str(self.home), "KEEN_PORT": str(self.port)}

    @property
    def settings(self) -> config.Settings:
        return config.Settings(self.home, self.port, "keen", None)

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run([KEEN_DB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"keen-db {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def su(self, database: str = "keen") -> psycopg.Connection:
        return psycopg.connect(self.settings.superuser_url(database), autocommit=True)

    def maintenance(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.role_url("keen_maintenance"), autocommit=True)

    def postmaster_pid(self) -> int:
        return int((self.settings.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def destroy(self) -> None:
        if cluster.initialised(self.settings):
            cluster.stop(self.settings, mode="immediate")
        shutil.rmtree(self.home, ignore_errors=True)


def new_cluster(prefix: str) -> Embedded:
    """A KEEN_HOME that does not exist yet (keen-db up creates it) and a free port."""
    home = Path(tempfile.mkdtemp(prefix=f"keen_{prefix}_", dir="/var/tmp"))
    home.rmdir()
    return Embedded(home, free_port())


def stop_copy(home: Path, port: int) -> None:
    """Stop and remove a recovered copy (a KEEN_HOME made by keen-db pitr)."""
    Embedded(home, port).destroy()
