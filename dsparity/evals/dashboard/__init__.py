"""The dashboard: a read-only FastAPI + jinja2 app over the results store.

Pages reuse the report's template parts, so a comparison page is the report, live. Every asset
is served by the app itself (no CDN); the Content-Security-Policy allows nothing else. Bound to
loopback it answers loopback Host names only (no DNS rebinding); bound elsewhere it requires a
token (Bearer header, a cookie, or ?token= once, which sets the cookie).
"""

from __future__ import annotations

from dsparity.evals.dashboard.app import create_app, is_loopback
from dsparity.evals.dashboard.views import pair_samples, trend_svg

__all__ = ["create_app", "is_loopback", "pair_samples", "trend_svg"]
