"""Agent sessions: the recursive tree, phases, tool executions, git operations and completion
(which charges through keen.deduct_credits). Every rule is in db/functions/sessions.sql; this
module calls, maps rows to frozen dataclasses, and assembles session_tree's rows into a tree."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from ._base import Area, M, Query, one, query, rows
from .credits import money

PHASES = ("EXPLORE", "PLAN", "FOUND", "SUMMON", "COMPLETE")
STATUSES = ("running", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class AgentSession:
    """One row of keen.agent_sessions (tree_path, the internal materialized path, left out)."""

    id: UUID
    user_id: UUID
    session_id: str
    parent_session_id: UUID | None
    root_session_id: UUID
    session_depth: int
    max_recursion_depth: int | None
    git_branch: str
    vision: str
    working_directory: str
    current_phase: str
    phase_started_at: datetime
    agent_options: dict[str, Any]
    start_time: datetime
    end_time: datetime | None
    last_activity_at: datetime
    iteration_count: int
    tool_calls_count: int
    claude_cost_usd: Decimal
    keen_cost_credits: Decimal
    tokens_used: int
    context_tokens_used: int
    files_modified: list[str]
    files_created: list[str]
    files_deleted: list[str]
    execution_status: str
    success: bool | None
    error_message: str | None
    completion_report: Any
    streaming_enabled: bool
    websocket_connections: list[str]
    is_admin_session: bool
    bypass_credit_deduction: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TreeRow:
    """One row of keen.session_tree."""

    id: UUID
    session_id: str
    parent_session_id: UUID | None
    session_depth: int
    git_branch: str
    current_phase: str
    execution_status: str
    claude_cost_usd: Decimal
    keen_cost_credits: Decimal
    tokens_used: int


@dataclass(frozen=True)
class SessionNode(TreeRow):
    """A session in a tree read by SessionsApi.tree: its own figures (TreeRow's), its children
    (in session_tree's order: git_branch, then id) and its parent (None for the tree's top)."""

    children: tuple[SessionNode, ...] = ()
    parent: SessionNode | None = field(default=None, compare=False, repr=False)

    def walk(self) -> Iterator[SessionNode]:
        """This node and every node below it, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def find(self, session_uuid: UUID | str) -> SessionNode | None:
        key = UUID(str(session_uuid))
        return next((n for n in self.walk() if n.id == key), None)

    @property
    def subtree_claude_cost_usd(self) -> Decimal:
        return sum((n.claude_cost_usd for n in self.walk()), Decimal(0))

    @property
    def subtree_keen_cost_credits(self) -> Decimal:
        return sum((n.keen_cost_credits for n in self.walk()), Decimal(0))

    @property
    def subtree_tokens_used(self) -> int:
        return sum(n.tokens_used for n in self.walk())

    @property
    def size(self) -> int:
        return sum(1 for _ in self.walk())


def build_tree(rows: Sequence[TreeRow]) -> SessionNode:
    """The tree of session_tree's rows: the first row is the top, every other row's parent is
    among the rows before it (session_tree orders by depth)."""
    if not rows:
        raise ValueError("a tree needs at least its top session")
    kids: dict[UUID | None, list[TreeRow]] = {}
    for row in rows[1:]:
        kids.setdefault(row.parent_session_id, []).append(row)

    def make(row: TreeRow) -> SessionNode:
        children = tuple(make(child) for child in kids.get(row.id, ()))
        node = SessionNode(**row.__dict__, children=children)
        for child in children:
            object.__setattr__(child, "parent", node)  # frozen: links set once, while building
        return node

    return make(rows[0])


@dataclass(frozen=True)
class TreeSummary:
    """keen.session_tree_summary: the session's own figures against its whole subtree's."""

    root_id: UUID
    session_count: int
    max_depth: int
    levels: int
    own_claude_cost_usd: Decimal
    own_keen_cost_credits: Decimal
    own_tokens_used: int
    subtree_claude_cost_usd: Decimal
    subtree_keen_cost_credits: Decimal
    subtree_tokens_used: int
    running_count: int
    completed_count: int
    failed_count: int
    cancelled_count: int


@dataclass(frozen=True)
class PhaseTransition:
    id: UUID
    session_id: UUID
    user_id: UUID
    from_phase: str
    to_phase: str
    transition_timestamp: datetime
    duration_ms: int | None
    summary: str
    key_findings: list[str]
    next_actions: list[str]
    confidence: Decimal | None
    estimated_time_remaining: str | None
    phase_metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ToolExecution:
    id: UUID
    session_id: UUID
    user_id: UUID
    tool_name: str
    tool_parameters: dict[str, Any]
    execution_timestamp: datetime
    execution_time_ms: int
    success: bool
    result_data: Any
    error_message: str | None
    tokens_consumed: int
    cost: Decimal
    execution_context: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class GitOperation:
    id: UUID
    session_id: UUID
    user_id: UUID
    operation_type: str
    branch_name: str
    commit_hash: str | None
    operation_timestamp: datetime
    commit_message: str | None
    files_changed: list[str]
    lines_added: int
    lines_deleted: int
    merge_conflicts: Any
    success: bool
    error_message: str | None
    created_at: datetime


def jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# Columns named explicitly: a column added to a table later must not break class_row.
SESSION = """id, user_id, session_id, parent_session_id, root_session_id, session_depth, max_recursion_depth,
        git_branch, vision, working_directory, current_phase, phase_started_at, agent_options, start_time,
        end_time, last_activity_at, iteration_count, tool_calls_count, claude_cost_usd, keen_cost_credits,
        tokens_used, context_tokens_used, files_modified, files_created, files_deleted, execution_status,
        success, error_message, completion_report, streaming_enabled, websocket_connections,
        is_admin_session, bypass_credit_deduction, created_at, updated_at"""
TRANSITION = """id, session_id, user_id, from_phase, to_phase, transition_timestamp, duration_ms, summary,
        key_findings, next_actions, confidence, estimated_time_remaining, phase_metadata, created_at"""
TOOL = """id, session_id, user_id, tool_name, tool_parameters, execution_timestamp, execution_time_ms, success,
        result_data, error_message, tokens_consumed, cost, execution_context, created_at"""
GIT = """id, session_id, user_id, operation_type, branch_name, commit_hash, operation_timestamp, commit_message,
        files_changed, lines_added, lines_deleted, merge_conflicts, success, error_message, created_at"""

CREATE_SQL = (
    "SELECT "
    + SESSION
    + """ FROM keen.create_session(p_user_id => %s, p_session_id => %s,
        p_git_branch => %s, p_vision => %s, p_working_directory => %s, p_parent_id => %s, p_agent_options => %s)"""
)
GET_SQL = "SELECT " + SESSION + " FROM keen.get_session(p_id => %s)"
PROGRESS_SQL = (
    "SELECT "
    + SESSION
    + """ FROM keen.update_session_progress(p_id => %s, p_current_phase => %s,
        p_iteration_count => %s, p_tool_calls_count => %s, p_tokens_used => %s, p_context_tokens_used => %s)"""
)
COMPLETE_SQL = (
    "SELECT "
    + SESSION
    + """ FROM keen.complete_session(p_id => %s, p_success => %s,
        p_claude_cost_usd => %s, p_files_created => %s, p_files_modified => %s, p_files_deleted => %s,
        p_error_message => %s, p_completion_report => %s)"""
)
CANCEL_SQL = "SELECT " + SESSION + " FROM keen.cancel_session(p_id => %s, p_reason => %s)"
LIST_SQL = "SELECT " + SESSION + " FROM keen.list_sessions(p_limit => %s, p_offset => %s, p_status => %s)"
TREE_SQL = """SELECT id, session_id, parent_session_id, session_depth, git_branch, current_phase, execution_status,
        claude_cost_usd, keen_cost_credits, tokens_used FROM keen.session_tree(p_id => %s)"""
SUMMARY_SQL = """SELECT root_id, session_count, max_depth, levels, own_claude_cost_usd, own_keen_cost_credits,
        own_tokens_used, subtree_claude_cost_usd, subtree_keen_cost_credits, subtree_tokens_used,
        running_count, completed_count, failed_count, cancelled_count
      FROM keen.session_tree_summary(p_id => %s)"""
PHASE_SQL = (
    "SELECT "
    + TRANSITION
    + """ FROM keen.record_phase_transition(p_id => %s, p_to_phase => %s,
        p_summary => %s, p_key_findings => %s, p_next_actions => %s, p_confidence => %s,
        p_estimated_time_remaining => %s, p_phase_metadata => %s)"""
)
TOOL_SQL = (
    "SELECT "
    + TOOL
    + """ FROM keen.record_tool_execution(p_session_id => %s, p_tool_name => %s,
        p_execution_time_ms => %s, p_success => %s, p_tool_parameters => %s, p_result_data => %s,
        p_error_message => %s, p_tokens_consumed => %s, p_cost => %s, p_execution_context => %s)"""
)
GIT_SQL = (
    "SELECT "
    + GIT
    + """ FROM keen.record_git_operation(p_session_id => %s, p_operation_type => %s,
        p_branch_name => %s, p_success => %s, p_commit_hash => %s, p_commit_message => %s,
        p_files_changed => %s, p_lines_added => %s, p_lines_deleted => %s, p_merge_conflicts => %s,
        p_error_message => %s)"""
)


class SessionsApi(Area[M]):
    """tx.sessions: see CONTRACT.md "Agent sessions" and docs/sessions.md."""

    @query
    def create_session(
        self,
        user_id: UUID | str,
        session_id: str,
        git_branch: str,
        vision: str,
        working_directory: str,
        parent_id: UUID | str | None = None,
        agent_options: dict[str, Any] | None = None,
    ) -> Query[AgentSession]:
        """A root session, or a child of parent_id (its `id`, not its session_id)."""
        return one(
            CREATE_SQL,
            (user_id, session_id, git_branch, vision, working_directory, parent_id, Jsonb(agent_options or {})),
            AgentSession,
        )

    @query
    def get_session(self, id: UUID | str) -> Query[AgentSession]:
        return one(GET_SQL, (id,), AgentSession)

    @query
    def update_session_progress(
        self,
        id: UUID | str,
        current_phase: str | None = None,
        iteration_count: int | None = None,
        tool_calls_count: int | None = None,
        tokens_used: int | None = None,
        context_tokens_used: int | None = None,
    ) -> Query[AgentSession]:
        """Counters given replace the stored totals; a new phase is recorded as a transition."""
        return one(
            PROGRESS_SQL,
            (id, current_phase, iteration_count, tool_calls_count, tokens_used, context_tokens_used),
            AgentSession,
        )

    @query
    def complete_session(
        self,
        id: UUID | str,
        success: bool,
        claude_cost_usd: Decimal | int = 0,
        files_created: Sequence[str] = (),
        files_modified: Sequence[str] = (),
        files_deleted: Sequence[str] = (),
        error_message: str | None = None,
        completion_report: Any = None,
    ) -> Query[AgentSession]:
        """Ends the session and charges its cost, in this one transaction."""
        return one(
            COMPLETE_SQL,
            (
                id,
                success,
                money(claude_cost_usd),
                list(files_created),
                list(files_modified),
                list(files_deleted),
                error_message,
                jsonb(completion_report),
            ),
            AgentSession,
        )

    @query
    def cancel_session(self, id: UUID | str, reason: str | None = None) -> Query[list[AgentSession]]:
        """Cancels the session and its running descendants; returns those it cancelled."""
        return rows(CANCEL_SQL, (id, reason), AgentSession)

    @query
    def list_sessions(self, limit: int = 100, offset: int = 0, status: str | None = None) -> Query[list[AgentSession]]:
        """The actor's sessions (everyone's for an admin), newest first."""
        return rows(LIST_SQL, (limit, offset, status), AgentSession)

    @query
    def session_tree(self, id: UUID | str) -> Query[list[TreeRow]]:
        """The session and all its descendants, by depth then git_branch."""
        return rows(TREE_SQL, (id,), TreeRow)

    @query
    def tree(self, id: UUID | str) -> Query[SessionNode]:
        """session_tree as linked nodes (parent, children), the session on top."""
        return rows(TREE_SQL, (id,), TreeRow).then(build_tree)

    @query
    def tree_summary(self, id: UUID | str) -> Query[TreeSummary]:
        return one(SUMMARY_SQL, (id,), TreeSummary)

    @query
    def record_phase_transition(
        self,
        id: UUID | str,
        to_phase: str,
        summary: str = "",
        key_findings: Sequence[str] = (),
        next_actions: Sequence[str] = (),
        confidence: Decimal | None = None,
        estimated_time_remaining: str | None = None,
        phase_metadata: dict[str, Any] | None = None,
    ) -> Query[PhaseTransition]:
        """A phase change with its report (update_session_progress records one without)."""
        return one(
            PHASE_SQL,
            (
                id,
                to_phase,
                summary,
                list(key_findings),
                list(next_actions),
                confidence,
                estimated_time_remaining,
                Jsonb(phase_metadata or {}),
            ),
            PhaseTransition,
        )

    @query
    def record_tool_execution(
        self,
        session_id: UUID | str,
        tool_name: str,
        execution_time_ms: int,
        success: bool,
        tool_parameters: dict[str, Any] | None = None,
        result_data: Any = None,
        error_message: str | None = None,
        tokens_consumed: int = 0,
        cost: Decimal | int = 0,
        execution_context: dict[str, Any] | None = None,
    ) -> Query[ToolExecution]:
        return one(
            TOOL_SQL,
            (
                session_id,
                tool_name,
                execution_time_ms,
                success,
                Jsonb(tool_parameters or {}),
                jsonb(result_data),
                error_message,
                tokens_consumed,
                money(cost),
                Jsonb(execution_context or {}),
            ),
            ToolExecution,
        )

    @query
    def record_git_operation(
        self,
        session_id: UUID | str,
        operation_type: str,
        branch_name: str,
        success: bool,
        commit_hash: str | None = None,
        commit_message: str | None = None,
        files_changed: Sequence[str] = (),
        lines_added: int = 0,
        lines_deleted: int = 0,
        merge_conflicts: Any = None,
        error_message: str | None = None,
    ) -> Query[GitOperation]:
        return one(
            GIT_SQL,
            (
                session_id,
                operation_type,
                branch_name,
                success,
                commit_hash,
                commit_message,
                list(files_changed),
                lines_added,
                lines_deleted,
                jsonb(merge_conflicts),
                error_message,
            ),
            GitOperation,
        )
