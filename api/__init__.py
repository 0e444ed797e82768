"""stockguard's HTTP API: a thin Starlette layer over the engine."""

from .app import create_app

__all__ = ["create_app"]
