"""Agent sessions through the client: the recursive tree (depths, widths, subtrees, the depth
limit, sequential mode, also under concurrency), tenant isolation, phases, tools and git, and
completion that charges through deduct_credits in the same transaction (the reference
lifecycle, the admin bypass, concurrent retries, KN001). Every test that moves money ends
with assert_ledger_clean(db)."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from keen_client import errors
from keen_client.sessions import AgentSession, SessionNode, build_tree

from .conftest import assert_ledger_clean

D = Decimal


# --- helpers ---------------------------------------------------------------------------------


def create(keen, user_id, name=None, parent=None, branch=None, actor=None, **options) -> AgentSession:
    name = name or f"s-{uuid.uuid4().hex[:12]}"
    with keen.as_user(actor or user_id) as tx:
        return tx.sessions.create_session(
            user_id, name, branch or f"agent/{name}", f"vision of {name}", "/work/repo", parent, options or None
        )


def session(keen, actor, sid) -> AgentSession:
    with keen.as_user(actor) as tx:
        return tx.sessions.get_session(sid)


def complete(keen, actor, sid, cost=0, success=True, **kw) -> AgentSession:
    with keen.as_user(actor) as tx:
        return tx.sessions.complete_session(sid, success, D(cost), **kw)


def grant(keen, admin_id, user_id, amount):
    with keen.as_user(admin_id) as tx:
        tx.credits.add_credits(user_id, D(amount), "test purchase")


def balance(keen, user_id) -> Decimal:
    with keen.as_user(user_id) as tx:
        return tx.credits.get_balance(user_id).current_balance


def ledger(db, user_id) -> list[tuple]:
    with db.su() as conn:
        return conn.execute(
            """SELECT transaction_type, amount, claude_cost_usd, session_id, is_admin_bypass
                                 FROM keen.credit_transactions WHERE user_id = %s AND transaction_type <> 'purchase'
                                ORDER BY entry_no""",
            (user_id,),
        ).fetchall()


def chain(keen, user_id, length, **options) -> list[AgentSession]:
    """A root and `length` descendants, each the child of the previous one."""
    nodes = [create(keen, user_id, **options)]
    for _ in range(length):
        nodes.append(create(keen, user_id, parent=nodes[-1].id))
    return nodes


def run_together(n, work):
    """Runs work(i) in n threads released at once; returns each result or exception."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- the tree --------------------------------------------------------------------------------


def test_trees_of_several_depths_and_widths_come_back_by_depth_then_branch(keen, make_user):
    user = make_user()
    root = create(keen, user, "root", branch="main")
    wide = [create(keen, user, f"w{i}", parent=root.id, branch=f"agent/{c}") for i, c in enumerate("dbca")]
    deep = [wide[0]]
    for level in range(5):
        deep.append(create(keen, user, f"deep{level}", parent=deep[-1].id, branch=f"deep/{level}"))
    fan = [create(keen, user, f"fan{i}", parent=wide[1].id, branch=f"fan/{i:02d}") for i in range(12)]

    with keen.as_user(user) as tx:
        rows = tx.sessions.session_tree(root.id)
    assert len(rows) == 1 + 4 + 5 + 12
    assert [(r.session_depth, r.git_branch) for r in rows] == sorted((r.session_depth, r.git_branch) for r in rows)
    assert rows[0].id == root.id and rows[0].parent_session_id is None
    assert [r.git_branch for r in rows[1:5]] == ["agent/a", "agent/b", "agent/c", "agent/d"]
    seen = set()
    for r in rows:  # every parent comes before its children
        assert r.parent_session_id is None or r.parent_session_id in seen
        seen.add(r.id)
    assert max(r.session_depth for r in rows) == 6
    assert {r.id for r in rows if r.session_depth == 2} == {deep[2 - 1].id} | {f.id for f in fan}


def test_the_client_tree_links_parents_and_children_and_sums_subtree_costs(keen, make_user):
    user = make_user()
    root = create(keen, user, "root")
    a = create(keen, user, "a", parent=root.id, branch="a")
    b = create(keen, user, "b", parent=root.id, branch="b")
    a1 = create(keen, user, "a1", parent=a.id, branch="a1")
    with keen.as_user(user) as tx:
        for sid, tokens in ((root.id, 10), (a.id, 20), (b.id, 30), (a1.id, 40)):
            tx.sessions.update_session_progress(sid, tokens_used=tokens)
        top = tx.sessions.tree(root.id)
        summary = tx.sessions.tree_summary(a.id)
    assert isinstance(top, SessionNode) and top.parent is None
    assert [c.session_id for c in top.children] == ["a", "b"]
    node_a = top.find(a.id)
    assert node_a.parent is top and node_a.children[0].parent is node_a
    assert [n.session_id for n in top.walk()] == ["root", "a", "a1", "b"]
    assert top.subtree_tokens_used == 100 and node_a.subtree_tokens_used == 60 and node_a.tokens_used == 20
    assert top.size == 4
    assert (summary.session_count, summary.own_tokens_used, summary.subtree_tokens_used) == (2, 20, 60)
    assert (summary.max_depth, summary.levels, summary.running_count) == (2, 2, 2)


def test_a_subtree_query_returns_the_session_and_only_its_descendants(keen, make_user):
    user = make_user()
    root = create(keen, user)
    left = create(keen, user, parent=root.id, branch="left")
    right = create(keen, user, parent=root.id, branch="right")
    left_kids = [create(keen, user, parent=left.id, branch=f"left/{i}") for i in range(3)]
    grandkid = create(keen, user, parent=left_kids[1].id, branch="left/1/x")
    create(keen, user, parent=right.id, branch="right/0")
    other_root = create(keen, user)
    create(keen, user, parent=other_root.id)
    with keen.as_user(user) as tx:
        sub = tx.sessions.session_tree(left.id)
        leaf = tx.sessions.session_tree(grandkid.id)
    assert [r.id for r in sub] == [left.id] + [k.id for k in left_kids] + [grandkid.id]
    assert [r.id for r in leaf] == [grandkid.id]


def test_depth_is_the_parents_plus_one_and_past_the_default_of_ten_is_kn004(keen, make_user):
    user = make_user()
    nodes = chain(keen, user, 10)
    assert [n.session_depth for n in nodes] == list(range(11))
    assert nodes[5].parent_session_id == nodes[4].id and nodes[5].root_session_id == nodes[0].id
    with pytest.raises(errors.SessionStateError, match="maximum session depth"):
        create(keen, user, parent=nodes[-1].id)
    with keen.as_user(user) as tx:
        assert len(tx.sessions.session_tree(nodes[0].id)) == 11


def test_agent_options_max_depth_lowers_or_raises_the_limit_up_to_the_hard_cap(db, keen, make_user):
    user = make_user()
    shallow = chain(keen, user, 2, max_depth=2)
    with pytest.raises(errors.SessionStateError):
        create(keen, user, parent=shallow[-1].id)
    # A child cannot raise the limit its ancestors set, but may lower it for its own subtree.
    with pytest.raises(errors.SessionStateError):
        create(keen, user, parent=shallow[-1].id, max_depth=40)
    low = create(keen, user, parent=shallow[0].id, max_depth=1)
    with pytest.raises(errors.SessionStateError):
        create(keen, user, parent=low.id)
    deep = chain(keen, user, 12, max_depth=12)
    assert deep[-1].session_depth == 12 and deep[-1].max_recursion_depth == 12
    for bad in (51, -1, 2.5, "3", True):
        with pytest.raises(errors.InvalidInput):
            create(keen, user, max_depth=bad)
    with db.su() as conn:  # the hard cap is a setting
        conn.execute("UPDATE keen.settings SET value = '8' WHERE key = 'hard_max_session_depth'")
    with pytest.raises(errors.InvalidInput):
        create(keen, user, max_depth=9)
    with pytest.raises(errors.SessionStateError):  # and it caps trees made before it changed
        create(keen, user, parent=deep[8].id)


def test_a_sequential_parent_runs_one_child_at_a_time_and_a_parallel_one_many(keen, make_user):
    user = make_user()
    seq = create(keen, user, execution_mode="sequential")
    first = create(keen, user, parent=seq.id)
    with pytest.raises(errors.SessionStateError, match="sequential"):
        create(keen, user, parent=seq.id)
    create(keen, user, parent=first.id)  # the child's own children are its own business
    complete(keen, user, first.id)
    second = create(keen, user, parent=seq.id)
    assert second.session_depth == 1
    par = create(keen, user, execution_mode="parallel")
    assert len([create(keen, user, parent=par.id) for _ in range(3)]) == 3
    with pytest.raises(errors.InvalidInput):
        create(keen, user, execution_mode="whenever")


def test_sequential_mode_holds_under_concurrent_create_session(keen, make_user):
    user = make_user()
    parent = create(keen, user, execution_mode="sequential")
    results = run_together(8, lambda i: create(keen, user, f"racer{i}", parent=parent.id))
    created = [r for r in results if isinstance(r, AgentSession)]
    refused = [r for r in results if isinstance(r, errors.SessionStateError)]
    assert len(created) == 1 and len(refused) == 7, results
    with keen.as_user(user) as tx:
        assert len(tx.sessions.session_tree(parent.id)) == 2


def test_a_parent_must_be_running(keen, make_user):
    user = make_user()
    done = create(keen, user)
    complete(keen, user, done.id)
    with pytest.raises(errors.SessionStateError, match="not running"):
        create(keen, user, parent=done.id)


def test_the_place_in_the_tree_is_fixed_once_written(db, keen, make_user):
    user = make_user()
    a, b = create(keen, user), create(keen, user)
    with db.su() as conn, pytest.raises(Exception, match="cannot change"):
        conn.execute("UPDATE keen.agent_sessions SET parent_session_id = %s WHERE id = %s", (a.id, b.id))


def test_a_bulk_insert_as_superuser_gets_its_depth_and_path_from_the_trigger(db, keen, make_user):
    user = make_user()
    with db.su() as conn:
        for name, value in (("tag", "bulk"), ("n", "500"), ("b", "3"), ("owner", str(user))):
            conn.execute("SELECT set_config('gen.' || %s, %s, false)", (name, value))
        conn.execute(BULK_TREE_SQL)
        root = conn.execute("SELECT id FROM keen.agent_sessions WHERE session_id = 'bulk-0'").fetchone()[0]
        deepest = conn.execute(
            "SELECT max(session_depth) FROM keen.agent_sessions WHERE user_id = %s", (user,)
        ).fetchone()[0]
    with keen.as_user(user) as tx:
        rows = tx.sessions.session_tree(root)
        summary = tx.sessions.tree_summary(root)
    assert len(rows) == 500 and rows[-1].session_depth == deepest == 6  # 1 + 3 + 9 + 27 + 81 + 243 < 500
    assert summary.session_count == 500 and summary.subtree_tokens_used == 500 * 100


# The generator docs/sessions.md gives for large trees (b children per node, heap numbering).
BULK_TREE_SQL = """
INSERT INTO keen.agent_sessions (id, user_id, session_id, parent_session_id, git_branch, vision,
                                 working_directory, claude_cost_usd, keen_cost_credits, tokens_used)
SELECT md5(current_setting('gen.tag') || ':' || i)::uuid,
       current_setting('gen.owner')::uuid,
       current_setting('gen.tag') || '-' || i,
       CASE WHEN i > 0 THEN md5(current_setting('gen.tag') || ':' || ((i - 1) / current_setting('gen.b')::int))::uuid END,
       'agent/' || current_setting('gen.tag') || '/' || i,
       'bench tree', '/tmp/bench', 0.01, 0.05, 100
  FROM generate_series(0, current_setting('gen.n')::int - 1) AS i
 ORDER BY i
"""


# --- tenants ---------------------------------------------------------------------------------


def test_a_parent_of_another_user_is_not_found_even_for_an_admin(keen, admin_id, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    alices = create(keen, alice)
    with pytest.raises(errors.NotFound):
        create(keen, bob, parent=alices.id)
    with pytest.raises(errors.NotFound):
        create(keen, bob, parent=alices.id, actor=admin_id)
    with pytest.raises(errors.NotFound):
        create(keen, bob, parent=uuid.uuid4())


def test_another_tenants_session_is_not_found_by_every_function(db, keen, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    sid = create(keen, alice).id
    calls = {
        "get": lambda s: s.get_session(sid),
        "progress": lambda s: s.update_session_progress(sid, "PLAN"),
        "phase": lambda s: s.record_phase_transition(sid, "PLAN"),
        "complete": lambda s: s.complete_session(sid, True, D(1)),
        "cancel": lambda s: s.cancel_session(sid),
        "tree": lambda s: s.session_tree(sid),
        "summary": lambda s: s.tree_summary(sid),
        "tool": lambda s: s.record_tool_execution(sid, "read_file", 5, True),
        "git": lambda s: s.record_git_operation(sid, "commit", "main", True),
    }
    for _name, call in calls.items():
        with pytest.raises(errors.NotFound):
            with keen.as_user(bob) as tx:
                call(tx.sessions)
        with pytest.raises(errors.NotFound):  # exactly as for an id that does not exist
            with keen.as_user(bob) as tx:
                call(_with_id(tx.sessions, sid))
    with keen.as_user(bob) as tx:
        assert tx.sessions.list_sessions() == []
        assert tx.scalar("SELECT count(*) FROM keen.agent_sessions") == 0
    assert session(keen, alice, sid).execution_status == "running"
    assert_ledger_clean(db)  # the refused completions charged nobody


class _with_id:
    """The same calls with a random id in place of the foreign one."""

    def __init__(self, api, sid):
        self.api, self.sid, self.other = api, sid, uuid.uuid4()

    def __getattr__(self, name):
        method = getattr(self.api, name)
        return lambda first, *a, **kw: method(self.other, *a, **kw)


def test_a_user_creates_sessions_for_itself_only_and_an_admin_for_anyone(keen, admin_id, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    with pytest.raises(errors.PermissionDenied):
        create(keen, bob, actor=alice)
    made = create(keen, bob, actor=admin_id)
    assert made.user_id == bob and not made.is_admin_session and not made.bypass_credit_deduction
    with pytest.raises(errors.NotFound):
        create(keen, uuid.uuid4(), actor=admin_id)


def test_admin_sees_all_sessions_and_a_user_only_its_own(keen, admin_id, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    a = [create(keen, alice) for _ in range(3)]
    b = create(keen, bob)
    complete(keen, alice, a[0].id)
    with keen.as_user(alice) as tx:
        mine = tx.sessions.list_sessions()
        running = tx.sessions.list_sessions(status="running")
        page = tx.sessions.list_sessions(limit=1, offset=1)
    assert {s.id for s in mine} == {s.id for s in a}
    assert {s.id for s in running} == {a[1].id, a[2].id}
    assert len(page) == 1 and page[0].id == mine[1].id
    with keen.as_user(admin_id) as tx:
        everyone = {s.id for s in tx.sessions.list_sessions()}
        assert {s.id for s in a} | {b.id} <= everyone
        assert tx.sessions.session_tree(b.id)[0].id == b.id
        assert tx.sessions.update_session_progress(b.id, iteration_count=3).iteration_count == 3
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"status": "zombie"}):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(alice) as tx:
                tx.sessions.list_sessions(**bad)


def test_a_session_id_is_unique_per_user_and_another_user_may_reuse_it(keen, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    create(keen, alice, "agent-main")
    with pytest.raises(errors.Conflict):
        create(keen, alice, "agent-main")
    assert create(keen, bob, "agent-main").session_id == "agent-main"


@pytest.mark.parametrize(
    "field,value",
    [("session_id", ""), ("session_id", "x" * 65), ("git_branch", " "), ("vision", ""), ("working_directory", None)],
)
def test_blank_or_oversized_identity_fields_are_invalid_input(keen, make_user, field, value):
    user = make_user()
    args = {"session_id": "s", "git_branch": "main", "vision": "v", "working_directory": "/w"}
    args[field] = value
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(user) as tx:
            tx.sessions.create_session(user, **args)


# --- phases, tools, git ----------------------------------------------------------------------


def test_a_phase_change_records_the_time_spent_in_the_phase_left(db, keen, make_user):
    user = make_user()
    s = create(keen, user)
    assert s.current_phase == "EXPLORE"
    time.sleep(0.05)
    with keen.as_user(user) as tx:
        after = tx.sessions.update_session_progress(s.id, "PLAN", iteration_count=2, tokens_used=1500)
        same = tx.sessions.update_session_progress(s.id, "PLAN", tool_calls_count=4)
        report = tx.sessions.record_phase_transition(
            s.id, "FOUND", "planned", ["a finding"], ["next"], D("0.8"), "10 minutes", {"k": 1}
        )
    assert after.current_phase == "PLAN" and after.phase_started_at > s.phase_started_at
    assert after.last_activity_at > s.last_activity_at
    assert (same.iteration_count, same.tool_calls_count, same.tokens_used) == (2, 4, 1500)
    assert report.from_phase == "PLAN" and report.key_findings == ["a finding"] and report.confidence == D("0.8")
    with db.su() as conn:
        rows = conn.execute(
            "SELECT from_phase, to_phase, duration_ms FROM keen.phase_transitions "
            "WHERE session_id = %s ORDER BY transition_timestamp",
            (s.id,),
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("EXPLORE", "PLAN"), ("PLAN", "FOUND")]
    assert rows[0][2] >= 50 and rows[1][2] >= 0


@pytest.mark.parametrize("phase", ["explore", "DONE", "", "COMPLETE "])
def test_only_the_five_phases_exist(keen, make_user, phase):
    user = make_user()
    s = create(keen, user)
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(user) as tx:
            tx.sessions.update_session_progress(s.id, phase)
    assert session(keen, user, s.id).current_phase == "EXPLORE"


def test_progress_and_phase_reports_need_a_running_session_and_sane_values(keen, make_user):
    user = make_user()
    s = create(keen, user)
    for bad in ({"iteration_count": -1}, {"tokens_used": -5}):
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(user) as tx:
                tx.sessions.update_session_progress(s.id, **bad)
    with pytest.raises(errors.SessionStateError):  # already in EXPLORE
        with keen.as_user(user) as tx:
            tx.sessions.record_phase_transition(s.id, "EXPLORE")
    with pytest.raises(errors.InvalidInput):
        with keen.as_user(user) as tx:
            tx.sessions.record_phase_transition(s.id, "PLAN", confidence=D("1.5"))
    complete(keen, user, s.id)
    with pytest.raises(errors.SessionStateError):
        with keen.as_user(user) as tx:
            tx.sessions.update_session_progress(s.id, "PLAN")


def test_tool_executions_and_git_operations_are_recorded_for_a_running_session(db, keen, make_user):
    user = make_user()
    s = create(keen, user)
    with keen.as_user(user) as tx:
        tool = tx.sessions.record_tool_execution(
            s.id, "read_file", 12, True, {"path": "a.py"}, {"lines": 3}, tokens_consumed=40, cost=D("0.002")
        )
        tx.sessions.record_tool_execution(s.id, "run_tests", 900, False, error_message="1 failed")
        git = tx.sessions.record_git_operation(
            s.id, "commit", "agent/x", True, "ABCDEF1234", "feat: x", ["a.py"], 10, 2
        )
        after = tx.sessions.get_session(s.id)
    assert tool.user_id == user and tool.cost == D("0.002") and tool.tool_parameters == {"path": "a.py"}
    assert git.commit_hash == "abcdef1234" and git.lines_added == 10
    assert after.tool_calls_count == 2 and after.last_activity_at > s.last_activity_at
    bad_calls = [
        lambda t: t.record_tool_execution(s.id, "", 1, True),
        lambda t: t.record_tool_execution(s.id, "x", -1, True),
        lambda t: t.record_tool_execution(s.id, "x", 1, True, tool_parameters=[1]),
        lambda t: t.record_tool_execution(s.id, "x", 1, True, cost=D(-1)),
        lambda t: t.record_git_operation(s.id, "yeet", "main", True),
        lambda t: t.record_git_operation(s.id, "commit", "main", True, commit_hash="not-a-hash"),
        lambda t: t.record_git_operation(s.id, "commit", "", True),
        lambda t: t.record_git_operation(s.id, "merge", "main", True, lines_added=-3),
    ]
    for call in bad_calls:
        with pytest.raises(errors.InvalidInput):
            with keen.as_user(user) as tx:
                call(tx.sessions)
    complete(keen, user, s.id)
    with pytest.raises(errors.SessionStateError):
        with keen.as_user(user) as tx:
            tx.sessions.record_git_operation(s.id, "push", "main", True)
    with db.su() as conn:
        assert (
            conn.execute("SELECT count(*) FROM keen.tool_executions WHERE session_id = %s", (s.id,)).fetchone()[0] == 2
        )
        assert (
            conn.execute("SELECT count(*) FROM keen.git_operations WHERE session_id = %s", (s.id,)).fetchone()[0] == 1
        )


# --- completion and money --------------------------------------------------------------------


def test_the_reference_lifecycle_25_credits_a_session_costing_3_75_pays_18_75(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 25)
    s = create(keen, user, "test_session_123", branch="main")
    with keen.as_user(user) as tx:
        tx.sessions.update_session_progress(s.id, "EXPLORE", tokens_used=15000)
    done = complete(
        keen,
        user,
        s.id,
        D("3.75"),
        files_created=["src/test.ts"],
        completion_report={"summary": "Test completed successfully"},
    )
    assert done.execution_status == "completed" and done.success is True and done.end_time is not None
    assert done.claude_cost_usd == D("3.75") and done.keen_cost_credits == D("18.75")
    assert done.files_created == ["src/test.ts"] and done.completion_report == {
        "summary": "Test completed successfully"
    }
    assert done.current_phase == "COMPLETE"
    assert balance(keen, user) == D("6.25")
    assert ledger(db, user) == [("usage", D("-18.75"), D("3.75"), s.id, False)]
    assert_ledger_clean(db)


def test_the_admin_completes_a_50_dollar_session_recorded_as_a_bypass_charging_nothing(db, keen, admin_id):
    before = balance(keen, admin_id)
    s = create(keen, admin_id, "admin_session_123", branch="main")
    assert s.is_admin_session and s.bypass_credit_deduction
    done = complete(keen, admin_id, s.id, D("50.00"), files_created=["src/admin_test.ts"])
    assert done.claude_cost_usd == D("50") and done.keen_cost_credits == 0
    assert ledger(db, admin_id) == [("admin_bypass", D(0), D("50"), s.id, True)]
    with db.su() as conn:
        assert conn.execute(
            "SELECT markup_multiplier FROM keen.credit_transactions WHERE session_id = %s", (s.id,)
        ).fetchone()[0] == D(5)
    assert balance(keen, admin_id) == before
    assert_ledger_clean(db)


def test_an_admin_completing_a_users_session_charges_the_user(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    s = create(keen, user)
    done = complete(keen, admin_id, s.id, D(1))
    assert done.keen_cost_credits == D(5) and balance(keen, user) == D(5)
    assert_ledger_clean(db)


def test_completion_retried_concurrently_charges_once(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    s = create(keen, user)
    results = run_together(8, lambda i: complete(keen, user, s.id, D("2.5")))
    done = [r for r in results if isinstance(r, AgentSession)]
    refused = [r for r in results if isinstance(r, errors.SessionStateError)]
    assert len(done) == 1 and len(refused) == 7, results
    assert ledger(db, user) == [("usage", D("-12.5"), D("2.5"), s.id, False)]
    assert balance(keen, user) == D("87.5")
    assert_ledger_clean(db)


def test_completing_twice_is_kn004_and_charges_once(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    s = create(keen, user)
    complete(keen, user, s.id, D(1))
    with pytest.raises(errors.SessionStateError):
        complete(keen, user, s.id, D(1))
    with pytest.raises(errors.SessionStateError):
        complete(keen, user, s.id, D(1), success=False)
    assert balance(keen, user) == D(5)
    assert_ledger_clean(db)


def test_insufficient_credits_leave_the_session_running_and_unchanged(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 1)
    s = create(keen, user)
    with keen.as_user(user) as tx:
        before = tx.sessions.update_session_progress(s.id, "SUMMON", tokens_used=99)
    with pytest.raises(errors.InsufficientCredits):
        complete(keen, user, s.id, D("3.75"), files_created=["x"], completion_report={"a": 1})
    assert session(keen, user, s.id) == before
    assert ledger(db, user) == [] and balance(keen, user) == D(1)
    with db.su() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM keen.phase_transitions WHERE session_id = %s AND to_phase = 'COMPLETE'", (s.id,)
            ).fetchone()[0]
            == 0
        )
    grant(keen, admin_id, user, 20)  # topped up, the same completion goes through
    assert complete(keen, user, s.id, D("3.75")).keen_cost_credits == D("18.75")
    assert_ledger_clean(db)


def test_a_failed_session_pays_for_what_it_used_and_keeps_its_phase(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    s = create(keen, user)
    failed = complete(keen, user, s.id, D("0.4"), success=False, error_message="tests failed")
    assert (failed.execution_status, failed.success, failed.error_message) == ("failed", False, "tests failed")
    assert failed.current_phase == "EXPLORE" and failed.keen_cost_credits == D(2)
    assert balance(keen, user) == D(8)
    assert_ledger_clean(db)


def test_a_completion_that_cost_nothing_writes_no_ledger_row(db, keen, make_user):
    user = make_user()
    s = create(keen, user)
    done = complete(keen, user, s.id)
    assert done.execution_status == "completed" and done.keen_cost_credits == 0
    assert ledger(db, user) == []
    for bad in (D(-1), D("NaN"), D("Infinity")):
        other = create(keen, user)
        with pytest.raises(errors.InvalidInput):
            complete(keen, user, other.id, bad)
    assert_ledger_clean(db)


def test_cancel_ends_the_session_and_its_running_descendants_and_charges_nothing(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 10)
    root = create(keen, user)
    kids = [create(keen, user, parent=root.id, branch=f"k{i}") for i in range(3)]
    grandkid = create(keen, user, parent=kids[0].id)
    great = create(keen, user, parent=grandkid.id)
    complete(keen, user, kids[1].id, D(1))
    below_done = create(keen, user, parent=kids[2].id)
    complete(keen, user, kids[2].id)  # a completed child may leave a running grandchild
    with keen.as_user(user) as tx:
        cancelled = tx.sessions.cancel_session(root.id, "user pressed stop")
        summary = tx.sessions.tree_summary(root.id)
    assert {c.id for c in cancelled} == {root.id, kids[0].id, grandkid.id, great.id, below_done.id}
    assert cancelled[0].id == root.id
    assert all(
        c.execution_status == "cancelled" and c.error_message == "user pressed stop" and c.end_time for c in cancelled
    )
    assert (summary.cancelled_count, summary.completed_count, summary.running_count) == (5, 2, 0)
    assert summary.subtree_keen_cost_credits == D(5) and summary.own_keen_cost_credits == 0
    with pytest.raises(errors.SessionStateError):
        create(keen, user, parent=kids[0].id)
    with pytest.raises(errors.SessionStateError):
        with keen.as_user(user) as tx:
            tx.sessions.cancel_session(root.id)
    assert balance(keen, user) == D(5)
    assert_ledger_clean(db)


def test_nested_cancels_at_once_queue_instead_of_deadlocking(keen, make_user):
    user = make_user()
    for _ in range(3):
        root = create(keen, user)
        middle = create(keen, user, parent=root.id)
        for i in range(6):
            leaf = create(keen, user, parent=middle.id, branch=f"leaf/{i}")
            create(keen, user, parent=leaf.id)

        def cancel(i, top=root.id, inner=middle.id):
            with keen.as_user(user) as tx:
                return tx.sessions.cancel_session(inner if i % 2 else top, f"stop {i}")

        results = run_together(4, cancel)
        assert all(isinstance(r, (list, errors.SessionStateError)) for r in results), results
        with keen.as_user(user) as tx:
            assert tx.sessions.tree_summary(root.id).running_count == 0


def test_the_tree_summary_sets_own_cost_against_the_subtrees(db, keen, admin_id, make_user):
    user = make_user()
    grant(keen, admin_id, user, 100)
    root = create(keen, user)
    a = create(keen, user, parent=root.id)
    a1 = create(keen, user, parent=a.id)
    b = create(keen, user, parent=root.id)
    complete(keen, user, a1.id, D("1.5"))
    complete(keen, user, a.id, D("0.5"), success=False)
    complete(keen, user, b.id, D("0.25"))
    with keen.as_user(user) as tx:
        complete_root = tx.sessions.complete_session(root.id, True, D(1))
        summary = tx.sessions.tree_summary(root.id)
        top = tx.sessions.tree(root.id)
    assert complete_root.keen_cost_credits == D(5)
    assert (summary.own_claude_cost_usd, summary.subtree_claude_cost_usd) == (D(1), D("3.25"))
    assert (summary.own_keen_cost_credits, summary.subtree_keen_cost_credits) == (D(5), D("16.25"))
    assert (summary.session_count, summary.max_depth, summary.levels) == (4, 2, 3)
    assert (summary.completed_count, summary.failed_count) == (3, 1)
    assert top.subtree_keen_cost_credits == summary.subtree_keen_cost_credits
    assert top.find(a.id).subtree_claude_cost_usd == D(2)
    assert balance(keen, user) == D("83.75")
    assert_ledger_clean(db)


# --- a property: any tree shape ----------------------------------------------------------------


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parents=st.lists(st.integers(min_value=0, max_value=10_000), min_size=0, max_size=25),
    branches=st.lists(st.sampled_from(["a", "b", "B", "main", "z/1", "é"]), min_size=25, max_size=25),
)
def test_any_tree_shape_comes_back_whole_parents_first_by_depth_then_branch(keen, make_user, parents, branches):
    user = make_user()
    nodes = [create(keen, user, branch="root")]
    for i, p in enumerate(parents):
        nodes.append(create(keen, user, parent=nodes[p % len(nodes)].id, branch=branches[i]))
    pick = nodes[len(nodes) // 3]
    with keen.as_user(user) as tx:
        rows = tx.sessions.session_tree(nodes[0].id)
        sub = tx.sessions.session_tree(pick.id)
    assert {r.id for r in rows} == {n.id for n in nodes}
    keys = [(r.session_depth, r.git_branch.encode(), r.id.bytes) for r in rows]
    assert keys == sorted(keys)
    by_id = {r.id: r for r in rows}
    for r in rows[1:]:
        assert by_id[r.parent_session_id].session_depth == r.session_depth - 1
    top = build_tree(rows)
    assert top.size == len(nodes)
    expected_sub = {pick.id}
    for r in rows:  # rows are by depth, so a parent is decided before its children
        if r.parent_session_id in expected_sub:
            expected_sub.add(r.id)
    assert {r.id for r in sub} == expected_sub


# --- the session functions emit their own events (issue 13) -----------------------------------


def events(keen, actor, sid) -> list:
    with keen.as_user(actor) as tx:
        return tx.streaming.events_since(sid)


def test_a_phase_change_emits_phase_change(keen, make_user):
    u = make_user()
    s = create(keen, u)
    with keen.as_user(u) as tx:
        tx.sessions.update_session_progress(s.id, "EXPLORE", 1)  # the same phase: no event
        tx.sessions.update_session_progress(s.id, "PLAN", 2)
    [e] = events(keen, u, s.id)
    assert (e.event_type, e.event_source) == ("phase_change", "agent")
    assert e.event_data["from_phase"] == "EXPLORE" and e.event_data["to_phase"] == "PLAN"
    assert set(e.event_data) == {"transition_id", "from_phase", "to_phase", "duration_ms"}


def test_a_tool_execution_emits_its_name_and_outcome_never_its_parameters_or_result(keen, make_user):
    u = make_user()
    s = create(keen, u)
    with keen.as_user(u) as tx:
        t = tx.sessions.record_tool_execution(
            s.id, "bash", 12, False, {"token": "sk-secret"}, {"out": "private"}, "boom", 7
        )
    [e] = events(keen, u, s.id)
    assert (e.event_type, e.event_source) == ("tool_execution", "tool")
    assert e.event_data == {
        "tool_execution_id": str(t.id),
        "tool_name": "bash",
        "success": False,
        "execution_time_ms": 12,
        "tokens_consumed": 7,
    }


def test_a_git_operation_emits_git_operation(keen, make_user):
    u = make_user()
    s = create(keen, u)
    with keen.as_user(u) as tx:
        tx.sessions.record_git_operation(s.id, "commit", "main", True, "ABCDEF1", "msg", ["a.py"], 3, 1)
    [e] = events(keen, u, s.id)
    assert (e.event_type, e.event_source) == ("git_operation", "git")
    assert e.event_data["commit_hash"] == "abcdef1" and e.event_data["lines_added"] == 3
    assert "commit_message" not in e.event_data


def test_completing_emits_credits_charged_then_session_completed(db, keen, admin_id, make_user):
    u = make_user()
    grant(keen, admin_id, u, 25)
    s = create(keen, u)
    complete(keen, u, s.id, "3.75")
    kinds = [e.event_type for e in events(keen, u, s.id)]
    assert kinds == ["credits_charged", "phase_change", "session_completed"]
    charged, _, done = events(keen, u, s.id)
    assert D(str(charged.event_data["credits"])) == D("18.75")
    assert D(str(charged.event_data["balance_after"])) == D("6.25")
    assert done.event_data["success"] is True and D(str(done.event_data["keen_cost_credits"])) == D("18.75")
    assert done.event_data["transaction_id"] == charged.event_data["transaction_id"]
    assert_ledger_clean(db)


def test_a_failed_session_emits_session_failed(db, keen, make_user):
    u = make_user()
    s = create(keen, u)
    complete(keen, u, s.id, 0, success=False, error_message="it broke")
    [e] = events(keen, u, s.id)
    assert e.event_type == "session_failed" and e.event_data["success"] is False
    assert "it broke" not in str(e.event_data)


def test_an_admins_bypassed_charge_emits_credits_charged_with_zero_credits(db, keen, admin_id):
    s = create(keen, admin_id)
    complete(keen, admin_id, s.id, "1")
    charged = next(e for e in events(keen, admin_id, s.id) if e.event_type == "credits_charged")
    assert charged.event_data["is_admin_bypass"] is True and D(str(charged.event_data["credits"])) == 0
    assert_ledger_clean(db)


def test_a_deduction_on_a_session_emits_credits_charged_and_one_without_emits_nothing(db, keen, admin_id, make_user):
    u = make_user()
    grant(keen, admin_id, u, 10)
    s = create(keen, u)
    with keen.as_user(u) as tx:
        tx.credits.deduct_credits(u, D("0.1"), s.id, "call", "k-1")
        tx.credits.deduct_credits(u, D("0.1"), s.id, "call", "k-1")  # a retry: no second event
        tx.credits.deduct_credits(u, D("0.1"))
    with keen.as_user(u) as tx:
        feed = tx.streaming.events_for_user()
    assert [e.event_type for e in feed] == ["credits_charged"]
    assert D(str(feed[0].event_data["credits"])) == D("0.5")
    assert_ledger_clean(db)


def test_cancelling_emits_session_cancelled_for_each_cancelled_session(keen, make_user):
    u = make_user()
    root, child = chain(keen, u, 1)
    with keen.as_user(u) as tx:
        tx.sessions.cancel_session(root.id, "user stop")
    for sid in (root.id, child.id):
        [e] = events(keen, u, sid)
        assert e.event_type == "session_cancelled"
        assert e.event_data == {"reason": "user stop", "cancelled_with": str(root.id)}


def test_an_action_that_rolls_back_emits_nothing(db, keen, make_user):
    u = make_user()
    s = create(keen, u)

    class Abort(Exception):
        pass

    with psycopg.connect(db.app_url, autocommit=True) as raw:
        raw.execute("LISTEN keen_events")
        with pytest.raises(Abort):
            with keen.as_user(u) as tx:
                tx.sessions.update_session_progress(s.id, "PLAN")
                tx.sessions.record_tool_execution(s.id, "bash", 1, True)
                raise Abort
        with keen.as_user(u) as tx:
            tx.streaming.emit_event(s.id, "marker")
        notes = list(raw.notifies(timeout=30, stop_after=1))
    assert [n.payload.count("marker") for n in notes] == [1]  # the marker is the first notification
    assert [e.event_type for e in events(keen, u, s.id)] == ["marker"]
    assert session(keen, u, s.id).current_phase == "EXPLORE"


def test_a_refused_completion_emits_nothing(db, keen, make_user):
    u = make_user()
    s = create(keen, u)
    with pytest.raises(errors.InsufficientCredits):
        complete(keen, u, s.id, "1")
    assert events(keen, u, s.id) == []
    assert_ledger_clean(db)


# --- size caps (issue 16) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["vision", "working_directory", "agent_options"],
)
def test_session_inputs_have_size_caps(keen, make_user, field):
    u = make_user()
    big = {"vision": "v" * 20000, "working_directory": "/w" * 3000, "agent_options": {"x": "o" * 20000}}
    args = {"vision": "ok", "working_directory": "/w", "agent_options": None}
    args[field] = big[field]
    with keen.as_user(u) as tx:
        with pytest.raises(errors.InvalidInput):
            tx.sessions.create_session(
                u, "big", "main", args["vision"], args["working_directory"], None, args["agent_options"]
            )


def test_tool_parameters_results_and_errors_have_size_caps(keen, make_user):
    u = make_user()
    s = create(keen, u)
    for kwargs in (
        {"tool_parameters": {"p": "x" * 70000}},
        {"result_data": {"r": "x" * 270000}},
        {"error_message": "e" * 17000},
        {"execution_context": {"c": "x" * 17000}},
    ):
        with keen.as_user(u) as tx:
            with pytest.raises(errors.InvalidInput):
                tx.sessions.record_tool_execution(s.id, "bash", 1, True, **kwargs)
    with keen.as_user(u) as tx:
        tx.sessions.record_tool_execution(s.id, "bash", 1, True, {"p": "x" * 60000}, {"r": "x" * 200000})


def test_git_details_have_a_size_cap(keen, make_user):
    u = make_user()
    s = create(keen, u)
    for kwargs in (
        {"commit_message": "m" * 17000},
        {"files_changed": ["f" * 100] * 200},
        {"error_message": "e" * 17000},
    ):
        with keen.as_user(u) as tx:
            with pytest.raises(errors.InvalidInput):
                tx.sessions.record_git_operation(s.id, "commit", "main", True, **kwargs)


def test_completion_reports_errors_and_cancel_reasons_have_size_caps(keen, make_user):
    u = make_user()
    s = create(keen, u)
    for kwargs in (
        {"error_message": "e" * 17000},
        {"completion_report": {"r": "x" * 270000}},
        {"files_created": ["f" * 1000] * 300},
    ):
        with keen.as_user(u) as tx:
            with pytest.raises(errors.InvalidInput):
                tx.sessions.complete_session(s.id, False, D(0), **kwargs)
    with keen.as_user(u) as tx:
        with pytest.raises(errors.InvalidInput):
            tx.sessions.cancel_session(s.id, "r" * 2000)
    assert session(keen, u, s.id).execution_status == "running"


# --- scopes (CONTRACT.md "Scopes") -----------------------------------------------------------


def api_key(keen, user_id, scopes) -> str:
    """A new API key of user_id with these scopes (made by the user, unscoped)."""
    with keen.as_user(user_id) as tx:
        return tx.scalar("SELECT token FROM keen.create_api_key('scope test', %s)", (list(scopes),))


def test_a_phase_transition_needs_sessions_write(keen, make_user):
    user = make_user()
    root = create(keen, user)
    with pytest.raises(errors.PermissionDenied), keen.with_api_key(api_key(keen, user, ["sessions:read"])) as tx:
        tx.execute("SELECT keen.record_phase_transition(%s, 'PLAN')", (root.id,))
    assert session(keen, user, root.id).current_phase == root.current_phase
    with keen.with_api_key(api_key(keen, user, ["sessions:write"])) as tx:
        tx.execute("SELECT keen.record_phase_transition(%s, 'PLAN')", (root.id,))
    assert session(keen, user, root.id).current_phase == "PLAN"


def test_the_tree_summary_needs_sessions_read(keen, make_user):
    user = make_user()
    root = create(keen, user)
    create(keen, user, parent=root.id)
    with pytest.raises(errors.PermissionDenied), keen.with_api_key(api_key(keen, user, ["credits:read"])) as tx:
        tx.execute("SELECT * FROM keen.session_tree_summary(%s)", (root.id,))
    with keen.with_api_key(api_key(keen, user, ["sessions:read"])) as tx:
        assert tx.scalar("SELECT session_count FROM keen.session_tree_summary(%s)", (root.id,)) == 2
