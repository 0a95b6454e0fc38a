"""The hostile-program suite: every escape attempt is contained and classified, the host is unchanged
afterwards and no process outlives the sandbox."""

from __future__ import annotations

import errno
import json
import os
import signal
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


def test_programs_can_reopen_their_own_stdio_by_path():
    """`/dev/stdin` and `/dev/stdout` work as when run directly (the pipes belong to the run's uid)."""
    r = run_program("print(open('/dev/stdin').read().upper(), file=open('/dev/stdout', 'w'))", stdin="hi")
    assert (r.status, r.stdout.strip()) == ("ok", "HI"), r.stderr
    if os.access("/usr/bin/node", os.X_OK):
        js = "const fs = require('fs');\nfs.writeFileSync('/dev/stdout', fs.readFileSync('/dev/stdin'))"
        r = run_program(js, language="javascript", stdin="hi")
        assert (r.status, r.stdout) == ("ok", "hi"), r.stderr


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
    allowed = {"bin", "dev", "dsparity", "lib", "lib64", "proc", "sandbox", "sbin", "tmp", "usr"}
    assert set(eval(lines[0])) <= allowed
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


# ---------------------------------------------------------------- limits with and without cgroups


@pytest.fixture(params=["cgroup", "no-cgroup"])
def cgroups(request, monkeypatch, tmp_path):
    """Both enforcement paths: the machine's cgroups, and none at all (as on a host without a
    writable cgroup filesystem). Every limit must hold on both."""
    if request.param == "no-cgroup":
        monkeypatch.setattr(sandbox, "_CGROUP_ROOT", tmp_path / "no-cgroup-here")
    elif sandbox.sandbox_status()["cgroup"].startswith("unavailable"):
        pytest.skip("this machine gives no cgroup to test the cgroup path with")
    return request.param


def _check_path(r, cgroups):
    assert r.limits["cgroup"].startswith("unavailable") == (cgroups == "no-cgroup"), r.limits


def test_tmpfs_and_dev_are_bounded(cgroups):
    """1.2 GB written to /tmp, /dev/shm or /dev with memory_mb=256 must not fit anywhere."""
    src = textwrap.dedent("""
        import json, os
        written = {}
        for place in ("/tmp", "/dev/shm", "/dev"):
            n = 0
            try:
                for i in range(150):
                    with open(f"{place}/fill{i}", "wb") as f:
                        f.write(b"x" * (8 << 20))
                    n += 8
            except OSError as e:
                written[place + " error"] = e.errno
            written[place] = n
        print(json.dumps(written))
        """)
    r = run_program(src, memory_mb=256, timeout_s=20)
    _check_path(r, cgroups)
    assert r.status == "ok", r.stderr
    written = json.loads(r.stdout)
    assert written["/tmp"] <= 64 and written["/tmp error"] == errno.ENOSPC  # tmp_mb
    assert written["/dev/shm"] <= 16 and written["/dev/shm error"] == errno.ENOSPC
    assert written["/dev"] == 0 and written["/dev error"] == errno.EROFS


@pytest.mark.skipif(not os.access("/usr/bin/node", os.X_OK), reason="Debian's node absent")
def test_node_buffers_are_bounded(cgroups):
    r = run_program(
        "let a = []; for (let i = 0; i < 24; i++) a.push(Buffer.alloc(50e6, 1)); console.log('1.2 GB held');",
        language="javascript",
        memory_mb=256,
        timeout_s=20,
    )
    _check_path(r, cgroups)
    assert r.status == "memory" and "held" not in r.stdout, (r.status, r.stdout, r.stderr[-500:])


def test_memory_of_many_processes_is_bounded_together(cgroups):
    """Each child stays under its own RLIMIT_AS; their sum (600 MB) is over memory_mb=256."""
    src = textwrap.dedent("""
        import os, sys, time
        kids = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = b"x" * (100 << 20)
                time.sleep(4)
                os._exit(0)
            kids.append(pid)
        ok = all(os.waitpid(k, 0)[1] == 0 for k in kids)
        print("all six held 100 MB" if ok else "some were stopped")
        sys.exit(0 if ok else 1)
        """)
    r = run_program(src, memory_mb=256, timeout_s=20)
    _check_path(r, cgroups)
    assert r.status == "memory" and "all six" not in r.stdout, (r.status, r.stdout, r.limits)


def test_process_limit_holds(cgroups):
    """RLIMIT_NPROC does not bind root: each run gets a fresh host uid, so it does."""
    src = textwrap.dedent("""
        import os, time
        n = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(3)
                    os._exit(0)
                n += 1
            except OSError:
                break
        print(n)
        """)
    r = run_program(src, max_processes=32, timeout_s=20)
    _check_path(r, cgroups)
    assert r.status == "ok", r.stderr
    assert 0 < int(r.stdout) < 32
    assert r.limits.get("host_uid") != 0


def test_memory_bomb_both_paths(cgroups):
    r = run_program("a = []\nwhile True:\n    a.append(b'x' * 10**7)", memory_mb=256, timeout_s=20)
    _check_path(r, cgroups)
    assert r.status == "memory"


X86_64_SYSCALLS = {
    "clone_newuser": (56, "0x10000011"),  # clone(CLONE_NEWUSER | SIGCHLD)
    "clone_newns": (56, "0x00020011"),
    "unshare_newuser": (272, "0x10000000"),
    "setns": (308, "0, 0"),
    "io_uring_setup": (425, "1, ctypes.byref(params)"),
    "fsopen": (430, "b'tmpfs', 0"),
    "open_tree": (428, "-100, b'/tmp', 1"),
    "move_mount": (429, "-100, b'/tmp', -100, b'/sandbox', 0"),
    "process_vm_readv": (310, "child, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0"),
    "ptrace": (101, "0, 0, 0, 0"),
    "memfd_create": (319, "b'x', 0"),
    "shmget": (29, "0, 1 << 20, 0o1600"),
    "clone3": (435, "0, 0"),
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")
def test_seccomp_denies_escape_hatches_but_runtimes_work():
    calls = "\n".join(
        f"    r = libc.syscall({nr}, {args}); out[{name!r}] = (r, ctypes.get_errno())\n"
        f"    if r == 0 and {name!r}.startswith('clone'):\n        os._exit(0)"
        for name, (nr, args) in X86_64_SYSCALLS.items()
    )
    src = textwrap.dedent("""
        import ctypes, json, os, subprocess, threading, time
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        params = (ctypes.c_char * 120)()
        buf = ctypes.create_string_buffer(16)
        class IOV(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        local = IOV(ctypes.cast(buf, ctypes.c_void_p), 16)
        remote = IOV(id(params), 16)
        child = os.fork()
        if child == 0:
            time.sleep(5)
            os._exit(0)
        out = {}
        def probe():
        """) + calls + textwrap.dedent("""
        probe()
        t = threading.Thread(target=lambda: out.setdefault("thread", "ran"))
        t.start(); t.join()
        out["subprocess"] = subprocess.run(["/usr/bin/true"]).returncode
        print(json.dumps(out))
        """)
    r = run_program(src, timeout_s=10)
    assert r.status == "ok", r.stderr
    out = json.loads(r.stdout)
    assert out.pop("thread") == "ran" and out.pop("subprocess") == 0  # runtimes keep working
    absent = {"io_uring_setup", "memfd_create", "shmget", "clone3"}
    for name, (ret, err) in out.items():
        assert ret == -1, (name, out)
        assert err == (errno.ENOSYS if name in absent else errno.EPERM), (name, out)


# ---------------------------------------------------------------- how a run ended, never what it printed


def test_printing_memory_error_is_not_running_out_of_memory():
    r = run_program(
        "import sys\nprint('MemoryError')\n"
        "sys.stderr.write('MemoryError\\nFATAL ERROR: heap out of memory\\nCannot allocate memory\\n')\n"
        "sys.exit(1)"
    )
    assert r.status == "runtime_error" and r.exit_code == 1


def test_exit_codes_and_signals_that_look_like_limits_are_runtime_errors():
    xcpu = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)")
    assert xcpu.status == "runtime_error"  # the signal of RLIMIT_CPU, but no CPU time was used
    assert xcpu.signal == signal.SIGXCPU
    fake_kill = run_program("import os\nos._exit(137)")
    assert (fake_kill.status, fake_kill.exit_code, fake_kill.signal) == ("runtime_error", 137, None)


def test_the_supervisors_report_cannot_be_forged_or_reached():
    """The program writes a fake report everywhere it can; it still ends as it really did."""
    src = textwrap.dedent("""
        import json, os, signal
        fake = b'{"exit": 0, "cpu_s": 0, "maxrss_kb": 0}\\n'
        reached = []
        for fd in range(3, 64):
            try:
                os.write(fd, fake); reached.append(fd)
            except OSError:
                pass
        for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
            for fd in range(64):
                try:
                    w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, fake); reached.append(f"{pid}/{fd}")
                except OSError:
                    pass
        print(json.dumps(reached))
        raise SystemExit(1)
        """)
    r = run_program(src)
    assert r.status == "runtime_error" and r.exit_code == 1, (r.status, r.stdout)
    reached = json.loads(r.stdout.splitlines()[-1])
    assert all(str(x).split("/")[-1] in ("0", "1", "2") for x in reached), reached  # its own stdio pipes only
    killed = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos._exit(0)")
    assert killed.status == "runtime_error" and killed.exit_code is None  # no witness, no "ok"
