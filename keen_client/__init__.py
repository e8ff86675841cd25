"""keen_client: the thin Python client of keen-db (pool, actor context, typed rows, errors)."""

from .client import Keen, PoolSettings, Tx
from .errors import KeenError

__all__ = ["Keen", "KeenError", "PoolSettings", "Tx"]
