"""Shared pieces of the web-grader tests: skip marks and one sandboxed browser per test module
(browser start-up is the slow part on small machines; every page still gets a fresh context)."""

from __future__ import annotations

import importlib.util

import pytest

from dsparity.evals.graders.browser import BrowserSession, chromium_path
from dsparity.evals.graders.sandbox import bwrap_path
from dsparity.evals.graders.weblibs import web_libs_dir, web_libs_status

have_browser = (
    chromium_path() is not None
    and importlib.util.find_spec("playwright") is not None
    and bwrap_path() is not None
)
needs_browser = pytest.mark.skipif(
    not have_browser, reason="system Chromium, playwright or bubblewrap absent (scripts/setup installs them)"
)
needs_libs = pytest.mark.skipif(
    not all(web_libs_status().values()),
    reason=f"vendored CDN libraries absent in {web_libs_dir()} (scripts/setup)",
)


def browser_session():
    """For a module fixture: `yield from browser_session()`: one sandboxed Chromium for its pages."""
    if not have_browser:
        pytest.skip("system Chromium, playwright or bubblewrap absent")
    with BrowserSession() as session:
        yield session
