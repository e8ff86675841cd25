"""keen_client: the thin Python client of keen-db (pool, actor context, typed rows, errors).

Keen (threads) and AsyncKeen (asyncio) share one definition of every area method."""

from .aio import AsyncKeen, AsyncTx
from .client import Keen, PoolSettings, Tx
from .errors import KeenError

__all__ = ["AsyncKeen", "AsyncTx", "Keen", "KeenError", "PoolSettings", "Tx"]
