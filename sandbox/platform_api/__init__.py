"""Sandbox double of the AI multi-model platform's HTTP API (see ``app.create_app``)."""

from sandbox.platform_api.app import create_app
from sandbox.platform_api.state import PlatformState

__all__ = ["PlatformState", "create_app"]
