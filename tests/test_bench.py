"""keen-db bench plumbing on a tiny configuration: it runs every figure and ends with one JSON
object carrying every key of CONTRACT.md. No timing is asserted (that is the bench's job)."""

from __future__ import annotations

import json
import uuid

import psycopg
from click.testing import CliRunner

from keen_db.bench import GOALS
from keen_db.cli import cli

CONTRACT_KEYS = {
    "deduct_tps",
    "tpcb_tps",
    "ratio_deduct_vs_tpcb",
    "script_tps",
    "ratio_deduct_vs_script",
    "hot_tps_c1",
    "hot_tps_c8",
    "ratio_hot_c8_vs_c1",
    "update_ceiling_tps",
    "ratio_hot_vs_update_ceiling",
    "replay_tps",
    "ratio_replay_vs_fresh",
    "client_tps",
    "ratio_client_vs_sql",
    "partitioned_insert_ratio",
    "session_tree_10k_ms",
    "session_tree_100k_ms",
    "subtree_vs_pk_ratio",
    "platform_metrics_ms",
    "errors",
}


def test_bench_json_prints_every_contract_key_on_its_last_line(settings):
    name = f"keen_bench_t{uuid.uuid4().hex[:6]}"
    res = CliRunner().invoke(
        cli,
        [
            "bench",
            "--json",
            "--rounds",
            "3",
            "--seconds",
            "1",
            "--users",
            "40",
            "--tpcb-scale",
            "1",
            "--ledger-rows",
            "400",
            "--tree-sizes",
            "30",
            "300",
            "--database",
            name,
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    missing = CONTRACT_KEYS - result.keys()
    assert not missing, missing
    assert not result["skipped"], result["skipped"]
    assert all(result[k] is not None for k in CONTRACT_KEYS), {k: result[k] for k in CONTRACT_KEYS}
    assert result["settings"]["synchronous_commit"] == "on" and result["settings"]["rounds"] == 3
    assert set(result["goals_met"]) <= {key for key, *_ in GOALS}
    assert isinstance(result["errors"], int)
    with psycopg.connect(settings.superuser_url("postgres")) as conn:  # dropped at the end
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (name + "%",)).fetchone()[0] == 0


def test_bench_refuses_fewer_than_three_rounds():
    res = CliRunner().invoke(cli, ["bench", "--rounds", "2"])
    assert res.exit_code == 2 and "at least three rounds" in res.stderr
