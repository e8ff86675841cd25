"""Demo step: an agent session tree. A root session spawns two children, one of them a
grandchild; the agents move through their phases, record tool calls and a commit, and
complete, each completion charging its cost (5x) in the same transaction. The depth limit and
sequential mode refuse what they should, and the tree is printed with each session's own cost
and its subtree's. Leaves state["session_id"] (the root's id) for the streaming step."""

from __future__ import annotations

import uuid
from decimal import Decimal

import psycopg

from keen_client.errors import SessionStateError
from keen_db.sql import value

D = Decimal
COSTS = {"backend-db": D("0.40"), "frontend": D("0.85"), "backend": D("0.60"), "root": D("1.20")}


def _user_id(ctx) -> uuid.UUID:
    if ctx.state.get("user_id"):
        return ctx.state["user_id"]
    tag = uuid.uuid4().hex[:6]
    with ctx.keen.transaction() as tx:
        user_id = tx.scalar(
            "SELECT id FROM keen.register_user(%s, %s, %s, %s)",
            (f"agent_{tag}@example.com", f"agent_{tag}", "agent password", "Agent owner"),
        )
    ctx.state["user_id"] = user_id
    return user_id


def _admin_id(ctx) -> uuid.UUID:
    if ctx.state.get("admin_id"):
        return ctx.state["admin_id"]
    with psycopg.connect(ctx.superuser_url()) as conn:
        admin_id = value(conn, "SELECT id FROM keen.users WHERE role = 'super_admin'")
    ctx.state["admin_id"] = admin_id
    return admin_id


def _fund(ctx, user_id, needed: Decimal) -> Decimal:
    """Tops the user up through the admin (keen.add_credits) when the balance is short."""
    with ctx.keen.as_user(user_id) as tx:
        current = tx.credits.get_balance(user_id).current_balance
    if current < needed:
        with ctx.keen.as_user(_admin_id(ctx)) as tx:
            tx.credits.add_credits(user_id, D(50), "demo top-up for the agent sessions")
        current += D(50)
        ctx.say(f"The admin grants 50 credits (keen.add_credits): balance {current}.")
    return current


def _print_tree(ctx, top) -> None:
    rows = []
    for node in top.walk():
        indent = "  " * node.session_depth + ("└ " if node.session_depth else "")
        rows.append(
            [
                indent + node.session_id,
                node.git_branch,
                node.current_phase,
                node.execution_status,
                node.claude_cost_usd,
                node.keen_cost_credits,
                node.subtree_claude_cost_usd,
                node.subtree_keen_cost_credits,
            ]
        )
    ctx.table(
        "keen.session_tree: own cost and subtree cost",
        ["session", "branch", "phase", "status", "own USD", "own credits", "subtree USD", "subtree credits"],
        rows,
    )


def run(ctx) -> None:
    keen = ctx.keen
    ctx.step("Agent sessions: a recursive tree, phases, tools, git, and completion that charges")
    user_id = _user_id(ctx)
    before = _fund(ctx, user_id, sum(COSTS.values(), Decimal(0)) * 5)
    tag = uuid.uuid4().hex[:4]

    with keen.as_user(user_id) as tx:
        s = tx.sessions
        root = s.create_session(
            user_id,
            f"demo-{tag}-root",
            "main",
            "Build a todo app with an API and a UI",
            "/work/todo",
            agent_options={"max_depth": 2},
        )
        front = s.create_session(
            user_id, f"demo-{tag}-frontend", "agent/frontend", "The React UI", "/work/todo/ui", root.id
        )
        back = s.create_session(
            user_id,
            f"demo-{tag}-backend",
            "agent/backend",
            "The REST API",
            "/work/todo/api",
            root.id,
            {"execution_mode": "sequential"},
        )
        db = s.create_session(
            user_id,
            f"demo-{tag}-backend-db",
            "agent/backend-db",
            "The schema and migrations",
            "/work/todo/api/db",
            back.id,
        )
    ctx.state["session_id"] = root.id
    ctx.table(
        "keen.create_session: depth = parent's + 1",
        ["session", "branch", "depth", "max depth"],
        [[x.session_id, x.git_branch, x.session_depth, x.max_recursion_depth] for x in (root, front, back, db)],
    )

    refusals = []
    for label, parent, name in (
        ("a 4th level under the grandchild (root says max_depth 2)", db.id, "too-deep"),
        ("a 2nd running child of the sequential backend", back.id, "second-db"),
    ):
        try:
            with keen.as_user(user_id) as tx:
                tx.sessions.create_session(user_id, f"demo-{tag}-{name}", f"agent/{name}", "x", "/work", parent)
            refusals.append([label, "[red]allowed?![/]"])
        except SessionStateError as exc:
            refusals.append([label, f"refused: {exc}"])
    ctx.table("Hierarchy rules (KN004)", ["attempt", "result"], refusals)

    with keen.as_user(user_id) as tx:
        s = tx.sessions
        s.update_session_progress(root.id, "PLAN", iteration_count=3, tokens_used=12_000)
        s.record_phase_transition(
            root.id,
            "SUMMON",
            "Split into UI and API agents",
            ["two packages"],
            ["spawn frontend", "spawn backend"],
            D("0.85"),
        )
        for node, tokens in ((front, 30_000), (back, 22_000), (db, 9_000)):
            s.update_session_progress(node.id, "PLAN", iteration_count=2, tokens_used=tokens)
            s.update_session_progress(node.id, "FOUND")
        s.record_tool_execution(db.id, "write_file", 14, True, {"path": "db/schema.sql"}, tokens_consumed=800)
        s.record_tool_execution(db.id, "run_tests", 2300, True, {"suite": "db"}, {"passed": 12})
        s.record_git_operation(
            db.id, "commit", "agent/backend-db", True, "3f9a1c2", "schema: todos table", ["db/schema.sql"], 42, 0
        )
        transitions = tx.scalar(
            "SELECT count(*) FROM keen.phase_transitions WHERE session_id = ANY (%s)",
            ([root.id, front.id, back.id, db.id],),
        )
    ctx.say(
        f"Phases: EXPLORE -> PLAN -> FOUND/SUMMON, {transitions} phase_transitions rows, each with the time "
        "spent in the phase it left; the grandchild records 2 tool calls and a commit."
    )

    rows = []
    for node, name in ((db, "backend-db"), (front, "frontend"), (back, "backend"), (root, "root")):
        with keen.as_user(user_id) as tx:
            done = tx.sessions.complete_session(
                node.id,
                True,
                COSTS[name],
                files_created=[f"{name}/README.md"],
                completion_report={"summary": f"{name} done"},
            )
        rows.append([done.session_id, done.execution_status, done.claude_cost_usd, done.keen_cost_credits])
    ctx.table(
        "keen.complete_session: status, cost and the charge in one transaction",
        ["session", "status", "claude_cost_usd", "keen_cost_credits (x5)"],
        rows,
    )
    try:
        with keen.as_user(user_id) as tx:
            tx.sessions.complete_session(root.id, True, COSTS["root"])
    except SessionStateError as exc:
        ctx.say(f"Completing the root again: refused, {exc} (nothing charged twice).")

    with keen.as_user(user_id) as tx:
        top = tx.sessions.tree(root.id)
        summary = tx.sessions.tree_summary(root.id)
        after = tx.credits.get_balance(user_id).current_balance
    _print_tree(ctx, top)
    ctx.say(
        f"keen.session_tree_summary: {summary.session_count} sessions over {summary.levels} levels, "
        f"root's own {summary.own_keen_cost_credits} credits of the tree's {summary.subtree_keen_cost_credits}, "
        f"{summary.subtree_tokens_used:,} tokens, {summary.completed_count} completed."
    )
    ctx.say(f"Balance: {before} -> {after} credits (charged {before - after}).")
