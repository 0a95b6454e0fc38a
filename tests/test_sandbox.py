"""The hostile-program suite: every escape attempt is contained and classified, the host is unchanged
afterwards and no process outlives the sandbox."""

from __future__ import annotations

import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from dsparity.evals.graders import sandbox
from dsparity.evals.graders.sandbox import SandboxUnavailable, run_program

pytestmark = pytest.mark.skipif(
    sandbox.bwrap_path() is None or not os.access("/usr/bin/python3", os.X_OK),
    reason="bubblewrap or Debian's /usr/bin/python3 absent (scripts/setup installs them)",
)


def _procs_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _sleeper(marker: str) -> str:
    """Python source that replaces the current process with a long sleeper tagged by `marker`."""
    return f"os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(120)', {marker!r}])"


def test_ordinary_program_stdin_files_and_limits_reported():
    r = run_program(
        "import sys\nprint(sys.stdin.read().upper(), open('data.txt').read())",
        stdin="hello",
        files={"data.txt": "world"},
    )
    assert r.status == "ok" and r.exit_code == 0
    assert r.stdout.strip() == "HELLO world"
    assert r.limits["uid"] == 65534 and "cgroup" in r.limits


def test_runtime_error_and_exit_codes():
    assert run_program("raise SystemExit(3)").exit_code == 3
    r = run_program("1/0")
    assert r.status == "runtime_error" and "ZeroDivisionError" in r.stderr


def test_fork_bomb_is_contained():
    marker = f"forkbomb-{uuid.uuid4().hex}"
    src = textwrap.dedent(f"""
        import os, sys
        sys.argv.append({marker!r})
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)
    r = run_program(src, timeout_s=3)
    assert r.status in ("timeout", "runtime_error", "memory")
    assert r.wall_s < 8
    assert not _procs_with("/sandbox/main.py")
    if "pids.max" not in r.limits["cgroup"]:
        pytest.xfail(f"no pids cgroup here: {r.limits['cgroup']}")


def test_memory_bomb():
    r = run_program("a = []\nwhile True:\n    a.append(bytearray(10**7))", memory_mb=256, timeout_s=10)
    assert r.status == "memory"


def test_infinite_loop_is_killed_on_time():
    r = run_program("while True:\n    pass", timeout_s=1.5)
    assert r.status == "timeout" and r.exit_code is None
    assert 1.4 < r.wall_s < 4


def test_sleeping_program_times_out():
    r = run_program("import time\ntime.sleep(60)", timeout_s=1)
    assert r.status == "timeout" and r.wall_s < 3


def test_writes_outside_tmp_fail_and_host_is_unchanged(tmp_path):
    marker = f"dsparity-hostile-{uuid.uuid4().hex}"
    src = textwrap.dedent(f"""
        import os
        results = {{}}
        for path in ['/usr/{marker}', '/sandbox/{marker}', '/{marker}', '/etc/{marker}',
                     '{tmp_path}/{marker}', '/tmp/{marker}']:
            try:
                with open(path, 'w') as f:
                    f.write('x')
                results[path] = 'written'
            except OSError as e:
                results[path] = type(e).__name__
        print(results)
        """)
    r = run_program(src)
    assert r.status == "ok", r.stderr
    out = eval(r.stdout)  # our own program printed a dict literal
    assert out[f"/tmp/{marker}"] == "written"  # the private tmpfs
    assert all(v != "written" for k, v in out.items() if not k.startswith("/tmp/"))
    assert not Path(f"/tmp/{marker}").exists() and not (tmp_path / marker).exists()
    assert not Path(f"/usr/{marker}").exists()


def test_host_files_and_environment_are_invisible(monkeypatch):
    monkeypatch.setenv("DSPARITY_TEST_SECRET", "s3cret-value")
    src = textwrap.dedent("""
        import os
        print(sorted(os.listdir('/')))
        print(dict(os.environ))
        for path in ['/etc/passwd', '/root', '/work', '/home', '/proc/1/environ']:
            try:
                data = open(path).read() if os.path.isfile(path) else os.listdir(path)
                print(path, 'READ', str(data)[:200])
            except OSError as e:
                print(path, type(e).__name__)
        print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
        """)
    r = run_program(src)
    assert r.status == "ok", r.stderr
    assert "s3cret-value" not in r.stdout
    lines = r.stdout.splitlines()
    assert set(eval(lines[0])) <= {"bin", "dev", "lib", "lib64", "proc", "sandbox", "sbin", "tmp", "usr"}
    for path in ["/etc/passwd", "/root", "/work", "/home"]:
        assert f"{path} READ" not in r.stdout
    assert max(eval(lines[-1].removeprefix("pids "))) < 10  # its own PID namespace


def test_network_host_loopback_and_dns_are_unreachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        server.setblocking(False)
        port = server.getsockname()[1]
        src = textwrap.dedent(f"""
            import socket
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    s = socket.socket(family)
                    s.settimeout(2)
                    s.connect(('127.0.0.1' if family == socket.AF_INET else '::1', {port}))
                    print('CONNECTED')
                except OSError as e:
                    print('refused', type(e).__name__)
            for name in ('localhost', 'example.invalid'):
                try:
                    print('RESOLVED', socket.getaddrinfo(name, 80))
                except OSError as e:
                    print('no dns', type(e).__name__)
            """)
        r = run_program(src)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the host's listener
    assert r.status == "ok", r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout


def test_killing_its_parent_and_the_host_fails():
    src = textwrap.dedent(f"""
        import os, signal
        for pid in (os.getppid(), 1, {os.getpid()}, {os.getppid()}):
            try:
                os.kill(pid, signal.SIGKILL)
                print(pid, 'sent')
            except OSError as e:
                print(pid, type(e).__name__)
        print('alive')
        """)
    r = run_program(src, timeout_s=5)
    assert r.status in ("ok", "runtime_error", "timeout")
    os.kill(os.getpid(), 0)  # we are still here


def test_detached_child_does_not_outlive_the_sandbox():
    marker = f"detached-{uuid.uuid4().hex}"
    src = textwrap.dedent(f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {_sleeper(marker)}
            os._exit(0)
        print('parent done')
        """)
    r = run_program(src, timeout_s=5)
    assert r.status == "ok" and "parent done" in r.stdout
    assert _procs_with(marker) == []


def test_background_child_killed_on_timeout():
    marker = f"bg-{uuid.uuid4().hex}"
    src = f"import os, time\nif os.fork() == 0:\n    {_sleeper(marker)}\ntime.sleep(60)"
    r = run_program(src, timeout_s=1)
    assert r.status == "timeout"
    assert _procs_with(marker) == []


def test_stdout_flood_is_capped():
    r = run_program("while True:\n    print('x' * 1000)", max_output_bytes=100_000, timeout_s=10)
    assert r.status == "output_limit"
    assert len(r.stdout) <= 100_000 and r.wall_s < 5


def test_file_size_limit():
    r = run_program("open('/tmp/big', 'wb').write(b'x' * (80 << 20))", max_file_mb=8)
    assert r.status in ("runtime_error", "memory") and r.exit_code != 0


def test_no_capabilities_and_no_ptrace():
    src = textwrap.dedent("""
        import ctypes, os
        caps = [ln for ln in open('/proc/self/status') if ln.startswith('Cap')]
        print(caps)
        libc = ctypes.CDLL(None, use_errno=True)
        print('ptrace', libc.ptrace(0, 0, 0, 0), 'unshare', libc.unshare(0x20000))
        """)
    r = run_program(src)
    assert r.status == "ok", r.stderr
    assert all(ln.strip().endswith("0000000000000000") for ln in eval(r.stdout.splitlines()[0]))
    assert "ptrace -1 unshare -1" in r.stdout


def test_missing_bwrap_refuses(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_program("print(1)")


@pytest.mark.skipif(not os.access("/usr/bin/node", os.X_OK), reason="Debian's node absent")
def test_javascript_programs():
    r = run_program(
        "process.stdin.on('data', d => console.log(String(d).trim().toUpperCase()))",
        language="javascript",
        stdin="hi",
    )
    assert r.status == "ok" and r.stdout.strip() == "HI"
    r = run_program(
        "let a = []; while (true) a.push(new Array(1e6).fill(1));",
        language="javascript",
        memory_mb=256,
        timeout_s=10,
    )
    assert r.status == "memory"


def test_program_cannot_fake_a_sandbox_error():
    r = run_program("import sys\nsys.stderr.write('bwrap: Can not mount\\n')\nraise SystemExit(125)")
    assert r.status == "runtime_error" and r.exit_code == 125


def test_broken_sandbox_is_a_sandbox_error_and_graders_refuse(monkeypatch):
    from dsparity.evals.graders import GradeInput, get_grader

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/bin/false")  # "bwrap" that never starts anything
    r = run_program("print(1)")
    assert r.status == "sandbox_error"
    doc = {"prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"}
    with pytest.raises(SandboxUnavailable, match="does not start"):
        get_grader("code")(GradeInput("    return 1", "", doc), {})
