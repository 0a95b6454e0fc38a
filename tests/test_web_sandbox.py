"""The browser sandbox: what Chromium, and anything that escapes into its processes, can see of the
host. A process started with the very argv the grader starts Chromium with (`sandbox_prefix`) and
the sandboxed browser itself (`read_as_browser`: a file:// URL opened with the browser's own rights,
what a page that escaped Chromium's renderer would get) must not reach the host's secrets."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from web_helpers import browser_session, have_browser, needs_browser

from dsparity.evals.graders.browserbox import sandbox_prefix
from dsparity.evals.storage.store import default_url

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"  # Debian's interpreter lives under /usr, the one tree the sandbox shares
PROBE = r"""
import json, os, sys
out = {}
for p in sys.argv[1:]:
    if p.startswith("write:"):  # leave a file where the host can see who wrote it
        open(p[6:], "w").close()
        continue
    try:
        if os.path.isdir(p):
            os.listdir(p)
            out[p] = "listed"
        else:
            with open(p, "rb") as f:
                f.read(1)
            out[p] = "read"
    except OSError as e:
        out[p] = e.strerror
out["env"] = sorted(os.environ)
print(json.dumps(out))
"""
needs_sandbox = pytest.mark.skipif(
    not have_browser or not os.access(PYTHON, os.X_OK), reason=f"bubblewrap or {PYTHON} absent"
)


@pytest.fixture
def open_dir():
    """A folder the dropped-privilege user may enter (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="dsparity-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _secrets() -> list[str]:
    """Host paths a hostile page must never read, whether they exist here or not."""
    db = default_url().removeprefix("sqlite:///")
    paths = ["/etc/shadow", "/etc/gshadow", "/etc/ssh", *glob.glob("/etc/ssh/*key*"), "/etc/passwd"]
    paths += ["/root", "/home", str(Path.home()), str(REPO), str(Path(db).resolve()), "/var/lib", "/run/user"]
    return paths


def _probe(paths: list[str], mounts: tuple[str, ...] = ()) -> dict:
    done = subprocess.run(
        [*sandbox_prefix(mounts=mounts), PYTHON, "-I", "-c", PROBE, *paths],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DSPARITY_TEST_SECRET": "hunter2"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_sandbox
def test_a_process_in_the_browser_sandbox_is_not_root_on_the_host(open_dir):
    drop = open_dir / "drop"
    drop.mkdir()
    drop.chmod(0o777)
    _probe(["write:/out/owner"], mounts=("--bind", str(drop), "/out"))
    assert (drop / "owner").stat().st_uid != 0  # what a file written inside says about its writer


@needs_sandbox
def test_a_process_in_the_browser_sandbox_reads_no_host_secrets():
    if os.geteuid() == 0:  # the hole this closes: as root, /etc/shadow was readable inside
        assert Path("/etc/shadow").read_bytes()
    assert REPO.is_dir() and Path.home().is_dir()  # they exist out here: invisible inside, not absent
    controls = [PYTHON, "/usr/share"] + (
        ["/etc/fonts/fonts.conf"] if Path("/etc/fonts/fonts.conf").exists() else []
    )
    seen = _probe(_secrets() + controls)
    assert all(seen[p] in ("read", "listed") for p in controls), seen  # the probe itself works
    leaked = {p: seen[p] for p in _secrets() if seen[p] in ("read", "listed")}
    assert not leaked, leaked
    assert "DSPARITY_TEST_SECRET" not in seen["env"]  # the environment is cleared


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the sandbox user is that user, by design")
def test_the_sandbox_user_does_not_own_roots_files(open_dir):
    """Even a root-owned file bound into the sandbox stays closed: the mapped user is uid 65534 on
    the host (before: root itself, so every root-only file was the sandbox user's own)."""
    secret = open_dir / "root-only"
    secret.write_text("root:secret\n")
    secret.chmod(0o600)
    seen = _probe(["/canary"], mounts=("--ro-bind", str(secret), "/canary"))
    assert seen["/canary"] == "Permission denied", seen


@pytest.fixture(scope="module")
def browser():
    yield from browser_session()


@pytest.mark.browser
@needs_browser
def test_the_sandboxed_browser_cannot_open_host_files(browser):
    fonts = "/etc/fonts/fonts.conf"
    if Path(fonts).exists():  # a file the sandbox shares: proves read_as_browser really reads files
        assert "fontconfig" in browser.read_as_browser(f"file://{fonts}")
    db = default_url().removeprefix("sqlite:///")
    for path in ["/etc/shadow", "/etc/ssh", "/root", str(Path.home()), str(REPO), str(Path(db).resolve())]:
        text = browser.read_as_browser(f"file://{path}")
        assert "root:" not in text and "PRIVATE KEY" not in text, (path, text[:200])
        if Path(path).is_dir() and any(Path(path).iterdir()):
            first = next(iter(sorted(Path(path).iterdir()))).name
            assert first not in text, (path, text[:200])  # no directory listing either


@pytest.mark.browser
@needs_browser
def test_a_hostile_page_gets_nothing_from_the_host(browser):
    page = """<html><body><pre id=out></pre><script>
    const out = document.getElementById('out');
    const say = (s) => { out.textContent += s + '\\n'; console.log(s); };
    for (const p of ['/etc/shadow', '/etc/passwd', '/root/', '/home/']) {
      fetch('file://' + p).then(r => r.text()).then(t => say('fetch ' + t.slice(0, 40)), e => say('no ' + p));
      const x = new XMLHttpRequest();
      try { x.open('GET', 'file://' + p, false); x.send(); say('xhr ' + x.responseText.slice(0, 40)); }
      catch (e) { say('no xhr ' + p); }
      const f = document.createElement('iframe'); f.src = 'file://' + p; document.body.appendChild(f);
    }
    fetch('/etc/shadow').then(r => r.text()).then(t => say('origin ' + t), e => say('no origin'));
    </script></body></html>"""
    r = browser.render(page, seconds=1.0, shots=1)
    assert r.loaded and r.console  # the page ran and reported
    assert not any("root:" in line for line in r.console), r.console
    assert "http://artifact.dsparity.test/etc/shadow" in r.blocked_requests


@pytest.mark.browser
@needs_browser
def test_chromium_keeps_its_own_sandbox_where_the_kernel_allows(browser):
    r = browser.render("<html><body>hi</body></html>", seconds=0.2, shots=1)
    assert "bubblewrap" in r.isolation
    if "Chromium's own sandbox" not in r.isolation:
        pytest.skip(f"no nested user namespaces here: {r.isolation}")
    assert "adequately sandboxed" in browser.read_as_browser("chrome://sandbox")
