"""Vendored web libraries live in the user's cache, not beside the source, and a page that asks for
one that is missing says which and how to fetch it, instead of scoring "not animated" in silence."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from web_helpers import needs_browser

from dsparity.errors import DsparityError
from dsparity.evals.graders import GradeInput, get_grader, weblibs
from dsparity.evals.graders.weblibs import (
    FETCH_COMMAND,
    WEB_LIBS,
    fetch,
    library_request,
    resolve_library,
    web_libs_dir,
    web_libs_status,
)

REPO = Path(__file__).resolve().parents[1]
P5_PAGE = """<!DOCTYPE html><html><head>
<script src="https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js"></script></head><body><script>
let x = 0;
function setup() { createCanvas(200, 200); }
function draw() { background(230); x = (x + 4) % 200; circle(x, 100, 30); }
</script></body></html>"""


def _fake_libs(root: Path) -> None:
    """Unpacked packages as npm pack leaves them (a package.json and the entry files)."""
    for name, versions in WEB_LIBS.items():
        for v in versions:
            base = root / f"{name}@{v}"
            (base / "lib").mkdir(parents=True)
            (base / "build").mkdir()
            (base / "package.json").write_text(f'{{"name": "{name}", "version": "{v}"}}')
            (base / "lib" / "p5.min.js").write_text("// p5")
            (base / "build" / "Tone.js").write_text("// tone")


def test_the_folder_is_the_users_cache_never_the_source_tree(monkeypatch, tmp_path):
    monkeypatch.delenv(weblibs.WEB_LIBS_ENV, raising=False)
    monkeypatch.setenv("DSPARITY_CACHE", str(tmp_path / "cache"))
    assert web_libs_dir() == tmp_path / "cache" / "web-libs"
    monkeypatch.delenv("DSPARITY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert web_libs_dir() == tmp_path / "home" / ".cache" / "dsparity" / "web-libs"
    assert REPO not in web_libs_dir().parents
    monkeypatch.setenv(weblibs.WEB_LIBS_ENV, str(tmp_path / "mine"))  # the explicit override still wins
    assert web_libs_dir() == tmp_path / "mine"


def test_fetch_reuses_copies_already_unpacked_and_needs_npm_for_the_rest(monkeypatch, tmp_path):
    monkeypatch.delenv(weblibs.WEB_LIBS_ENV, raising=False)
    monkeypatch.setenv("DSPARITY_CACHE", str(tmp_path / "cache"))
    old = tmp_path / "checkout" / ".cache" / "web-libs"
    _fake_libs(old)
    assert fetch(reuse=old, npm="/nonexistent/npm") == sorted(web_libs_status())
    assert all(web_libs_status().values()) and fetch(npm="/nonexistent/npm") == []
    assert not list(web_libs_dir().glob("*.part"))
    first = sorted(web_libs_status())[0]
    (web_libs_dir() / first / "package.json").unlink()
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm: the one missing library cannot come
    with pytest.raises(DsparityError, match="npm is not installed"):
        fetch()
    assert not (web_libs_dir() / first / "package.json").exists()


def test_scripts_setup_vendors_into_the_cache(tmp_path):
    """Run the web-library step of scripts/setup as written, in a checkout that has an old in-tree
    copy: the libraries land in $DSPARITY_CACHE/web-libs, and nothing is downloaded."""
    text = (REPO / "scripts" / "setup").read_text()
    step = text[text.index("# CDN libraries") :]
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    python = checkout / ".venv" / "bin" / "python"  # this test's interpreter, with its packages
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    _fake_libs(checkout / ".cache" / "web-libs")
    env = {
        "PATH": "/nonexistent",  # no npm: reuse only
        "HOME": str(tmp_path / "home"),
        "DSPARITY_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        ["/bin/bash", "-euo", "pipefail", "-c", step],
        cwd=checkout,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for lib in web_libs_status():
        assert (tmp_path / "cache" / "web-libs" / lib / "package.json").is_file()
    assert "added" in done.stdout


def test_a_missing_library_is_named_with_its_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(weblibs.WEB_LIBS_ENV, str(tmp_path / "empty"))
    req = library_request("https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js")
    assert (req.library, req.file) == ("p5@1.11.13", None)
    req = library_request("https://cdnjs.cloudflare.com/ajax/libs/three.js/r128/three.min.js")
    assert (req.library, req.file) == ("three@0.160.1", None)
    assert library_request("https://some.cdn.example/libs/p5.sound.min.js").library == "p5@1.11.13"
    assert library_request("https://example.invalid/tracker.js").library is None
    hint = weblibs.fetch_hint("p5@1.11.13")
    assert "p5@1.11.13" in hint and FETCH_COMMAND in hint and str(tmp_path / "empty") in hint


def test_library_urls_never_leave_the_library_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(weblibs.WEB_LIBS_ENV, str(tmp_path / "libs"))
    _fake_libs(tmp_path / "libs")
    (tmp_path / "secret.js").write_text("secret")
    for url in (
        "https://cdn.jsdelivr.net/npm/p5@1.9.0/../../secret.js",
        "https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/..%2F..%2F..%2Fsecret.js",
        "https://unpkg.com/three@0.170.0/examples/jsm/../../../../secret.js",
        "https://cdnjs.cloudflare.com/ajax/libs/p5.js/1.4.0/../../../../secret.js",
    ):
        found = resolve_library(url)
        assert found is None or (tmp_path / "libs") in found.parents, (url, found)


def test_the_module_command(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(weblibs.WEB_LIBS_ENV, raising=False)
    monkeypatch.setenv("DSPARITY_CACHE", str(tmp_path / "cache"))
    assert weblibs.main(["status"]) == 1
    assert "p5@1.11.13: missing" in capsys.readouterr().out
    _fake_libs(tmp_path / "old")
    assert weblibs.main(["fetch", "--reuse", str(tmp_path / "old")]) == 0
    assert weblibs.main(["status"]) == 0
    assert weblibs.main(["bogus"]) == 2


@pytest.mark.browser
@needs_browser
def test_the_grade_says_which_library_is_missing_and_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setenv(weblibs.WEB_LIBS_ENV, str(tmp_path / "empty"))
    g = get_grader("web")(
        GradeInput(
            "```html\n" + P5_PAGE + "\n```", "", {"checklist": ["uses p5.js", "the ball is animated"]}
        ),
        {"artifact_dir": str(tmp_path / "shots"), "seconds": 0.5, "shots": 1},
    )
    assert not g.passed
    [hint] = g.details["hints"]
    assert "https://cdn.jsdelivr.net/npm/p5@1.9.0/lib/p5.min.js" in hint and "p5@1.11.13" in hint
    assert FETCH_COMMAND in hint and str(tmp_path / "empty") in hint
    assert g.details["page"]["missing_libraries"][0]["library"] == "p5@1.11.13"
    by_item = {c["item"]: c for c in g.details["checks"]}
    assert by_item["uses p5.js"]["ok"] is False and re.search(
        "not vendored", str(by_item["uses p5.js"]["evidence"])
    )
