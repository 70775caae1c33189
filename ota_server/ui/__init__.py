"""The fleet dashboard: server-rendered pages under /ui/ (docs/dashboard.md)."""

from ota_server.ui.routes import setup

__all__ = ["setup"]
