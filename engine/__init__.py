"""stockguard's engine: atomic holds and moves over Redis, Valkey or Redis Cluster."""

from .config import Settings
from .connect import connect, open_engine
from .engine import Engine
from .errors import StockguardError
from .models import BufferOverride, Hold, HoldLine, HoldState, Policy, PolicyKind, StockLevel

__all__ = [
    "BufferOverride",
    "Engine",
    "Hold",
    "HoldLine",
    "HoldState",
    "Policy",
    "PolicyKind",
    "Settings",
    "StockLevel",
    "StockguardError",
    "connect",
    "open_engine",
]
