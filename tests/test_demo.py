"""`keen-db demo` runs end to end against a real server and ends with a clean doctor."""

from __future__ import annotations

from click.testing import CliRunner

from keen_db.cli import cli


def test_the_demo_walks_through_every_area_and_ends_with_every_doctor_check_ok(settings):
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for heading in (
        "Users",
        "Credits",
        "Agent sessions",
        "Streaming",
        "Analytics",
        "Operations",
        "The doctor's verdict",
    ):
        assert heading in out, heading
    verdict = out.split("The doctor's verdict", 1)[1]
    assert "FAIL" not in verdict
    assert "ok   ledger" in verdict and "ok   audit chain" in verdict
