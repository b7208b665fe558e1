"""The gemini wire format of the mock upstream, as a mixin of ``MockUpstream``."""

from __future__ import annotations

from aiohttp import web


class GeminiRoutes:
    def _add_gemini_routes(self, app: web.Application) -> None:
        """Register this format's routes on the mock's app."""
