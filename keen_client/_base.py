"""One definition of each area method, two front ends (Keen and AsyncKeen).

An area method builds a `Query[T]`: the SQL, its parameters, the shape of the answer (one row
as a dataclass, all rows, one value, nothing) and an optional step that turns the answer into
the method's result. It never touches a connection. Decorated with `@query`, the method is
bound to its transaction's runner: `Tx` (synchronous) returns the `T`, `AsyncTx` an awaitable
of it. mypy sees both: `tx.credits.deduct_credits(...)` is a `CreditTransaction` on a `Tx` and
an `Awaitable[CreditTransaction]` on an `AsyncTx`.

    class CreditsApi(Area[M]):
        @query
        def get_balance(self, user_id: UUID | str) -> Query[Balance]:
            return one("SELECT ... FROM keen.get_balance(p_user_id => %s)", (user_id,), Balance)

Rules stay in PL/pgSQL: a method only names the function, passes the arguments and says how
the row maps (psycopg's class_row, never by position).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from psycopg.rows import RowFactory, class_row, tuple_row

from .errors import KeenError, NotFound

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")
P = ParamSpec("P")

Params = Sequence[Any] | dict[str, Any] | None
Shape = Literal["one", "all", "scalar", "none"]


@dataclass(frozen=True)
class Query(Generic[T]):
    """What to run and how to read its answer; `then` post-processes the answer (pure Python,
    no database access: e.g. assembling a tree, parsing exact JSON)."""

    sql: str
    params: Params
    shape: Shape
    row: type[Any] | None = None
    post: Callable[[Any], T] | None = None

    def then(self, fn: Callable[[T], U]) -> Query[U]:
        prev = self.post

        def chained(raw: Any) -> U:
            return fn(prev(raw) if prev is not None else raw)

        return Query(self.sql, self.params, self.shape, self.row, chained)

    def finish(self, raw: Any) -> T:
        return self.post(raw) if self.post is not None else raw


@dataclass(frozen=True)
class Begin:
    """How a transaction of Keen or AsyncKeen starts: `statement` (BEGIN, or BEGIN READ ONLY)
    and `setup`, the statement that follows it (the timeouts behind a pooler, act_as), if any.
    Both are held back and leave with the transaction's first call in one pipeline (Tx.run):
    BEGIN, setup, the call and a Sync in one round trip."""

    statement: str
    setup: Query[None] | None


def one(sql: str, params: Params, row: type[R]) -> Query[R]:
    """The single row of `sql` as a `row` (NotFound when there is none)."""
    return Query(sql, params, "one", row)


def rows(sql: str, params: Params, row: type[R]) -> Query[list[R]]:
    """Every row of `sql`, each a `row`."""
    return Query(sql, params, "all", row)


def scalar(sql: str, params: Params, kind: type[R]) -> Query[R]:
    """The first column of the first row (`kind` is for the type checker; None if no row)."""
    return Query(sql, params, "scalar")


def void(sql: str, params: Params = None) -> Query[None]:
    """Run `sql` for its effect."""
    return Query(sql, params, "none")


_ROW_FACTORIES: dict[type[Any], RowFactory[Any]] = {}


def row_factory(row: type[Any] | None) -> RowFactory[Any]:
    """The cursor's row factory for a query: class_row(row), made once per dataclass (it is
    the same for every call), or plain tuples for a value or nothing."""
    if row is None:
        return tuple_row
    factory = _ROW_FACTORIES.get(row)
    if factory is None:
        factory = _ROW_FACTORIES[row] = class_row(row)
    return factory


def no_row(q: Query[Any]) -> KeenError:
    """A `one` query that found no row: NotFound, like the API's own P0002."""
    return NotFound("P0002", f"no row from {q.sql.split(' FROM ', 1)[-1].strip()[:120]!r}")


class Sync:
    """Marker: an area bound to a synchronous transaction (keen_client.Tx)."""


class Async:
    """Marker: an area bound to an asyncio transaction (keen_client.AsyncTx)."""


M = TypeVar("M", Sync, Async)


class Runner(Protocol):
    """What an area runs its queries on: Tx.run returns the result, AsyncTx.run a coroutine."""

    def run(self, q: Query[Any], /) -> Any: ...


class Area(Generic[M]):
    """Base of tx.users, tx.credits, ...: holds the transaction that runs its queries."""

    def __init__(self, runner: Runner):
        self._runner = runner


class query(Generic[P, T]):
    """Decorator of an area method returning a Query[T]: on a `Tx` the bound method returns T,
    on an `AsyncTx` an awaitable of T. `spec(...)` gives the Query without running it."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Query[T]]):
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.__name__ = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> query[P, T]: ...
    @overload
    def __get__(self, obj: Area[Sync], owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Area[Async], owner: type[Any]) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Area[Any] | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        fn, runner = self.fn, obj._runner

        def bound(*args: Any, **kwargs: Any) -> Any:
            return runner.run(fn(obj, *args, **kwargs))

        bound.__name__ = self.__name__
        bound.__doc__ = self.__doc__
        return bound
