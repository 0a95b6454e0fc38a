"""Run untrusted programs in a fresh bubblewrap sandbox, one per call.

Every program gets: all namespaces unshared (its own loopback only, no DNS, own PID space) and no
further user namespaces, a cleared environment, no capabilities, uid/gid 65534 inside and, when the
grader runs as root, a fresh unprivileged host uid of its own (so RLIMIT_NPROC, which root ignores,
binds), read-only `/usr` and nothing else of the host's files, size-limited tmpfs `/tmp` and
`/dev/shm` as the only writable places (`/dev` itself is read-only), `prlimit` limits (CPU seconds,
address space and data segment, file size, open files, processes, no core dumps), a seccomp filter
(no ptrace, namespaces, mounts, io_uring, memfd or SysV shared memory; sockets only AF_UNIX), and
where the cgroup filesystem allows it a per-run cgroup with `pids.max` and a memory limit. Without a
memory cgroup the host adds up the run's memory (proportional set of every process in its PID
namespace, plus its tmpfs) every 50 ms and kills it over the limit. The wall clock is enforced from
outside by killing the sandbox's process group; killing `bwrap` tears down the PID namespace, and
any process still in the run's cgroup or PID namespace is killed too. Output is read with a byte cap.

How the program ended is never read from its output: `supervise.py`, the program's parent inside
the sandbox, reports its exit status, CPU time and peak memory on a pipe the program cannot reach,
and the status is built from that report, the cgroup's OOM counters, the host's memory watch and
the host's own timer.

There is no fallback: without `bwrap` the call raises `SandboxUnavailable` and says how to install
it. `SandboxResult.limits` says which limits were really enforced (e.g. `cgroup: unavailable`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError

STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "stopped", "sandbox_error")
SANDBOX_UID = 65534
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_SETUP_FAILED = 125  # exit code of the launcher shell when it cannot join the cgroup
_PYTHON = "/usr/bin/python3"  # Debian's: runs Python programs and the supervisor
_SETPRIV = "/usr/bin/setpriv"
_SUPERVISOR = Path(__file__).with_name("supervise.py")
_OWN_PROCESSES = 3  # bwrap, its PID-1 and the supervisor count against the process limits
_HEADROOM_MB = 64  # total-memory limit over memory_mb: the supervisor and the runtime itself
_V8_RESERVE_MB = 16 << 10  # address space V8 reserves and never touches; RLIMIT_DATA bounds its use
_SHM_MB = 16
MEMORY_EVIDENCE = 0.8  # a failed run whose peak resident set reached this share of memory_mb ran out
_WATCH_S = 0.05  # how often the host adds up memory when no memory cgroup does it
_RUN_UIDS = (2_000_000_000, 1 << 24)  # host uids for runs when the grader is root: base, span

LANGUAGES: dict[str, dict[str, Any]] = {
    # -E -s: ignore PYTHON* variables and the user site; -B: no bytecode (the program dir is read-only)
    "python": {"file": "main.py", "argv": [_PYTHON, "-E", "-s", "-B"], "binary": _PYTHON},
    # V8 reserves far more address space than it uses: its heap is capped by --max-old-space-size
    # and everything it writes (heap, Buffers, wasm) by RLIMIT_DATA
    "javascript": {"file": "main.js", "argv": ["/usr/bin/node"], "binary": "/usr/bin/node", "v8": True},
}


class SandboxUnavailable(DsparityError):
    """bubblewrap (or the interpreter) is missing: code is never run unsandboxed."""


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    exit_code: int | None  # as the supervisor saw it (128 + N for signal N); None without its report
    stdout: str
    stderr: str
    wall_s: float
    limits: dict[str, Any] = field(default_factory=dict)  # what was actually enforced
    signal: int | None = None  # the signal that ended the program, per the supervisor
    cpu_s: float | None = None  # CPU seconds of the program and the children it reaped
    peak_mb: float | None = None  # peak resident set of its largest process

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)


def require_bwrap() -> str:
    path = bwrap_path()
    if path is None:
        raise SandboxUnavailable(
            "sandbox",
            "bwrap",
            "bubblewrap is not installed; untrusted code is never run without it",
            "run `scripts/setup` or `apt-get install bubblewrap`",
        )
    return path


def run_program(
    source: str,
    *,
    language: str = "python",
    stdin: str = "",
    files: dict[str, str | bytes] | None = None,
    timeout_s: float = 10,
    memory_mb: int = 512,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 64,
    max_file_mb: int = 64,
    tmp_mb: int = 64,
) -> SandboxResult:
    """Run `source` in a fresh sandbox and classify the outcome.

    `files` (name -> content) are placed read-only beside the program in `/sandbox`, the working
    directory. `stdin` is fed to the program. stdout/stderr are capped at `max_output_bytes` each;
    more is `output_limit`. Raises `SandboxUnavailable` when bubblewrap or the interpreter is absent.
    """
    main = LANGUAGES[language]["file"] if language in LANGUAGES else ""
    if main in (files or {}):
        raise DsparityError("sandbox", "files", f"bad file name {main!r}", "use another name")
    with Sandbox(
        {**(files or {}), main: source},
        language=language,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
        tmp_mb=tmp_mb,
    ) as box:
        box.start(main, stdin=stdin)
        return box.wait()


class Sandbox:
    """One sandboxed run: `files` go read-only into `/sandbox`, `start` runs one of them under the
    supervisor, `wait` (until it ends or `timeout_s` after `start`) or `stop` (now) gives the result.
    Two boxes can run side by side and talk over pipes passed with `pass_fds` (the HumanEval grader
    keeps the answer and the tests apart that way)."""

    def __init__(
        self,
        files: dict[str, str | bytes],
        *,
        language: str = "python",
        timeout_s: float = 10,
        memory_mb: int = 512,
        max_output_bytes: int = 1 << 20,
        max_processes: int = 64,
        max_file_mb: int = 64,
        tmp_mb: int = 64,
    ):
        if language not in LANGUAGES:
            raise DsparityError(
                "sandbox",
                "language",
                f"unsupported language {language!r}",
                f"use one of {', '.join(LANGUAGES)}",
            )
        self.language, self.lang = language, LANGUAGES[language]
        self.files = files
        self.timeout_s, self.memory_mb, self.cap = timeout_s, memory_mb, max_output_bytes
        self.max_processes, self.max_file_mb, self.tmp_mb = max_processes, max_file_mb, tmp_mb
        self._stack = contextlib.ExitStack()
        self._proc: subprocess.Popen | None = None
        self._result: SandboxResult | None = None

    # ------------------------------------------------------------ setting up

    def __enter__(self) -> Sandbox:
        self._bwrap = require_bwrap()
        for binary in {self.lang["binary"], _PYTHON}:
            if not os.access(binary, os.X_OK):
                raise SandboxUnavailable(
                    "sandbox",
                    self.language,
                    f"{binary} is not installed",
                    "run `scripts/setup` (Debian's interpreter runs inside the sandbox)",
                )
        self._uid = _run_uid()
        try:
            self._work = Path(
                self._stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="dsparity-sbx-", dir=_work_parent())
                )
            )
            self._write_files()
            self._cg = self._stack.enter_context(_Cgroup(self.memory_mb, self.max_processes + _OWN_PROCESSES))
        except BaseException:
            self._stack.close()
            raise
        return self

    def _write_files(self) -> None:
        """Program files in work/sandbox, the supervisor in work/dsparity; readable by the run's uid
        whatever the grader's umask."""
        prog, sup = self._work / "sandbox", self._work / "dsparity"
        for d in (self._work, prog, sup):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)
        for name, content in self.files.items():
            dest = (prog / name).resolve()
            if prog.resolve() not in dest.parents:
                raise DsparityError("sandbox", "files", f"bad file name {name!r}", "use a relative path")
            dest.parent.mkdir(parents=True, exist_ok=True)
            for d in dest.parents:
                if d == prog.resolve():
                    break
                os.chmod(d, 0o755)
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            os.chmod(dest, 0o644)
        (sup / "supervise.py").write_bytes(_SUPERVISOR.read_bytes())
        os.chmod(sup / "supervise.py", 0o644)

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._result is None:
            self.stop()
        self._stack.close()

    # ------------------------------------------------------------ running

    def start(
        self,
        script: str,
        args: Sequence[str] = (),
        *,
        stdin: str | bytes = "",
        pass_fds: Sequence[int] = (),
        ours: bool = False,
    ) -> None:
        """Start `/sandbox/<script>` with the language's interpreter; `pass_fds` stay open in it
        under the same numbers. `ours=True` is for dsparity's own Python (the tests' judge, which
        runs the task's tests on data, never an answer's code): it runs without the supervisor,
        and bwrap's exit status is taken as its own."""
        self._ours = ours
        status_r, status_w = os.pipe()
        report_r, report_w = os.pipe()
        seccomp_fd = _seccomp_fd()
        self._limits = self._describe(seccomp_fd is not None)
        argv = self._command(script, args, None if ours else report_w, status_w, seccomp_fd)
        drop = (
            [_SETPRIV, f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups"] if self._uid else []
        )
        launcher = [
            "/bin/sh",
            "-c",
            'for p in $DSPARITY_CGROUP_PROCS; do echo $$ > "$p" || exit 125; done; exec "$@"',
            "dsparity-sandbox",
            *drop,
            *argv,
        ]
        env = {"PATH": "/usr/bin:/bin", "DSPARITY_CGROUP_PROCS": " ".join(self._cg.procs_files)}
        fds = (status_w, report_w, *pass_fds) + (() if seccomp_fd is None else (seccomp_fd,))
        self._outs = {
            "stdout": bytearray(),
            "stderr": bytearray(),
            "status": bytearray(),
            "report": bytearray(),
        }
        self._flooded, self._exited = threading.Event(), threading.Event()
        self._timed_out = self._stopped = self._memory_killed = False
        self._watch = None if self._cg.memory_limited else _MemoryWatch((self.memory_mb + _HEADROOM_MB) << 20)
        self._stack.callback(os.close, status_r)
        self._stack.callback(os.close, report_r)
        try:
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = (self._stdio_pipe() for _ in range(3))
            self._t0 = time.monotonic()
            self._proc = subprocess.Popen(
                launcher,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=env,
                start_new_session=True,
                pass_fds=fds,
            )
        finally:
            # the sandbox holds the only child ends now: EOF when it is gone
            for fd in (status_w, report_w, in_r, out_w, err_w) + (
                () if seccomp_fd is None else (seccomp_fd,)
            ):
                os.close(fd)
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        stdin_w, stdout_r, stderr_r = os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb")
        self._threads = [
            threading.Thread(target=self._read_capped, args=("stdout", stdout_r), daemon=True),
            threading.Thread(target=self._read_capped, args=("stderr", stderr_r), daemon=True),
            threading.Thread(target=_read_fd, args=(status_r, self._outs["status"]), daemon=True),
            threading.Thread(target=_read_fd, args=(report_r, self._outs["report"]), daemon=True),
            threading.Thread(target=_feed, args=(stdin_w, data), daemon=True),
            threading.Thread(target=self._reap, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def wait(self) -> SandboxResult:
        """Wait until the program ends or its time is up (then it is killed)."""
        assert self._proc is not None, "start() first"
        deadline = self._t0 + self.timeout_s
        while not self._exited.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out = True
                self._kill()
                break
            if self._exited.wait(min(remaining, _WATCH_S) if self._watch else remaining):
                break
            if self._watch and self._watch.over(self._namespace()):
                self._memory_killed = True
                self._kill()
                break
        return self._finish()

    def stop(self) -> SandboxResult:
        """Kill the program now (if it still runs) and return its result."""
        assert self._proc is not None, "start() first"
        if not self._exited.is_set():
            self._stopped = True
            self._kill()
        return self._finish()

    def _stdio_pipe(self) -> tuple[int, int]:
        """A pipe owned by the run's uid, so the program can reopen its own stdio by path
        (`/dev/stdin`, `/dev/stdout`, a common idiom in JavaScript), as it could run directly."""
        r, w = os.pipe()
        if self._uid:
            os.fchown(r, self._uid, self._uid)  # one inode for both ends
        return r, w

    def _reap(self) -> None:
        self._proc.wait()  # a blocking wait: the end is seen at once, not at the next poll
        self._exited.set()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _read_capped(self, name: str, stream) -> None:
        buf = self._outs[name]
        while chunk := stream.read1(65536):
            room = self.cap - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room:
                self._flooded.set()
                self._kill()
                break
        stream.close()

    def _namespace(self) -> tuple[str, int] | None:
        """(PID namespace link, PID-1 pid) of the running sandbox, from bwrap's own status line
        (written before the program starts, so the program cannot be first to write it)."""
        first = bytes(self._outs["status"]).split(b"\n", 1)[0]
        try:
            info = json.loads(first)
            return f"pid:[{int(info['pid-namespace'])}]", int(info["child-pid"])
        except (ValueError, KeyError, TypeError):
            return None

    def _finish(self) -> SandboxResult:
        if self._result is not None:
            return self._result
        self._exited.wait()
        wall = time.monotonic() - self._t0
        namespace = self._namespace()
        self._cg.kill_all()
        self._kill()  # anything left in the process group (there should be nothing)
        if namespace:
            _kill_namespace(namespace[0])
        for t in self._threads:
            t.join(timeout=5)
        report = _parse_report(bytes(self._outs["report"]))
        if self._ours and self._proc.returncode is not None and self._proc.returncode >= 0:
            report = {"exit": self._proc.returncode, "cpu_s": 0.0, "maxrss_kb": 0}
        ending = _Ending(
            started=b'"child-pid"' in self._outs["status"],
            timed_out=self._timed_out,
            stopped=self._stopped,
            flooded=self._flooded.is_set(),
            memory_killed=self._memory_killed,
            oom=self._cg.oom_killed(),
            report=report,
            memory_mb=self.memory_mb,
            cpu_limit_s=self._limits["cpu_s"],
        )
        status = ending.classify()
        stderr = self._outs["stderr"].decode("utf-8", errors="replace")
        if status == "sandbox_error" and self._proc.returncode == _SETUP_FAILED:
            stderr = "could not join the run's cgroup\n" + stderr
        exit_code = None
        if report is not None and not self._timed_out:
            exit_code = report.get("exit", 128 + report.get("signal", 0))
        if self._watch:
            self._limits["memory_watch_peak_mb"] = round(self._watch.peak / (1 << 20), 1)
        self._result = SandboxResult(
            status,
            exit_code,
            self._outs["stdout"].decode("utf-8", errors="replace"),
            stderr,
            round(wall, 4),
            self._limits,
            signal=report.get("signal") if report else None,
            cpu_s=report.get("cpu_s") if report else None,
            peak_mb=round(report["maxrss_kb"] / 1024, 1) if report else None,
        )
        return self._result

    # ------------------------------------------------------------ the command line

    def _cpu_s(self) -> int:
        return math.ceil(self.timeout_s) + 1

    def _nproc(self) -> int:
        """RLIMIT_NPROC counts every task of the host uid: a fresh uid has none but ours; the
        grader's own uid (not root) has its other processes too."""
        limit = self.max_processes + _OWN_PROCESSES
        return limit if self._uid else limit + _tasks_of(os.getuid())

    def _address_space_mb(self) -> int:
        return self.memory_mb + (_V8_RESERVE_MB if self.lang.get("v8") else 0)

    def _describe(self, seccomp: bool) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "cpu_s": self._cpu_s(),
            "memory_mb": self.memory_mb,
            "memory_total": "cgroup" if self._cg.memory_limited else f"host watch every {_WATCH_S:g} s",
            "address_space_mb": self._address_space_mb(),
            "data_mb": self.memory_mb,
            "tmp_mb": self.tmp_mb,
            "shm_mb": _SHM_MB,
            "file_mb": self.max_file_mb,
            "open_files": 64,
            "processes": self.max_processes,
            "output_bytes": self.cap,
            "uid": SANDBOX_UID,
            "host_uid": self._uid if self._uid else os.getuid(),
            "network": "own loopback only",
            "cgroup": self._cg.description,
            "seccomp": seccomp,
        }

    def _command(
        self, script: str, args: Sequence[str], report_fd: int | None, status_fd: int, seccomp_fd: int | None
    ) -> list[str]:
        cpu, mb = self._cpu_s(), 1 << 20
        rlimits = [
            f"--cpu={cpu}:{cpu + 1}",
            f"--as={self._address_space_mb() * mb}",
            f"--data={self.memory_mb * mb}",
            f"--fsize={self.max_file_mb * mb}",
            "--nofile=64",
            "--core=0",
            f"--nproc={self._nproc()}",
        ]
        box = [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(self.tmp_mb * mb),
            "--tmpfs",
            "/tmp",
            "--size",
            str(_SHM_MB * mb),
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
            "--ro-bind",
            str(self._work / "sandbox"),
            "/sandbox",
            "--ro-bind",
            str(self._work / "dsparity"),
            "/dsparity",
            "--remount-ro",
            "/",
            "--chdir",
            "/sandbox",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "PYTHONIOENCODING",
            "utf-8",
            "--setenv",
            "PYTHONHASHSEED",
            "0",
            "--json-status-fd",
            str(status_fd),
        ]
        if seccomp_fd is not None:
            box += ["--seccomp", str(seccomp_fd)]
        return [
            "/usr/bin/prlimit",
            *rlimits,
            "--",
            self._bwrap,
            *box,
            *self._program(script, args, report_fd),
        ]

    def _program(self, script: str, args: Sequence[str], report_fd: int | None) -> list[str]:
        """The command bwrap runs: the program under the supervisor (a Python program runs in the
        supervisor's forked child, sparing a second interpreter start-up), or ours alone."""
        runtime = list(self.lang["argv"])
        if self.lang.get("v8"):
            runtime.append(f"--max-old-space-size={self.memory_mb}")
        program = [*runtime, f"/sandbox/{script}", *args]
        if report_fd is None:
            return program
        supervise = ["/dsparity/supervise.py", str(report_fd)]
        if self.language == "python":
            return [*runtime, *supervise, "--python", *program[len(runtime) :]]
        return [_PYTHON, "-I", "-S", "-B", *supervise, "--", *program]


@dataclass
class _Ending:
    """Everything trusted about how a run ended: the host's own timer and output caps, the cgroup's
    OOM counters, the host's memory watch and the supervisor's report. Never the program's output."""

    started: bool
    timed_out: bool
    stopped: bool
    flooded: bool
    memory_killed: bool
    oom: bool
    report: dict[str, Any] | None
    memory_mb: int
    cpu_limit_s: float

    def classify(self) -> str:
        if not self.started and not (self.timed_out or self.stopped):
            return "sandbox_error"  # bwrap (or joining the cgroup) failed before the program ran
        if self.flooded:
            return "output_limit"
        if self.timed_out:
            return "timeout"
        if self.memory_killed:
            return "memory"
        if self.report is None:
            # killed by us while running, or its supervisor was killed (by the program itself)
            return "stopped" if self.stopped else "runtime_error"
        if self.report.get("exit") == 0:
            return "ok"
        if self.oom or self.report["maxrss_kb"] >= MEMORY_EVIDENCE * self.memory_mb * 1024:
            return "memory"
        if self.report.get("signal") in (signal.SIGXCPU, signal.SIGKILL) and self.report["cpu_s"] >= (
            self.cpu_limit_s - 0.5
        ):
            return "timeout"  # RLIMIT_CPU: the CPU time it really used says so, not the signal alone
        return "runtime_error"


def _parse_report(data: bytes) -> dict[str, Any] | None:
    """The supervisor's one line; None when it never wrote one (killed) or it is malformed."""
    try:
        report = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("maxrss_kb"), int):
        return None
    if not isinstance(report.get("cpu_s"), int | float):
        return None
    if not (isinstance(report.get("exit"), int) or isinstance(report.get("signal"), int)):
        return None
    return report


def _read_fd(fd: int, buf: bytearray, limit: int = 65536) -> None:
    with contextlib.suppress(OSError):
        while (chunk := os.read(fd, 4096)) and len(buf) < limit:
            buf += chunk


def _feed(stream, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


def _run_uid() -> int | None:
    """A fresh host uid for one run when the grader is root (None otherwise): nothing else runs
    under it, so RLIMIT_NPROC counts exactly the run's processes, and the sandbox is not root on the
    host even in its own namespace's view of the world."""
    if os.geteuid() != 0:
        return None
    if not os.access(_SETPRIV, os.X_OK):
        raise SandboxUnavailable(
            "sandbox",
            "setpriv",
            f"{_SETPRIV} is missing",
            "install util-linux (`apt-get install util-linux`)",
        )
    return _RUN_UIDS[0] + secrets.randbelow(_RUN_UIDS[1])


def _work_parent() -> str:
    """The temp dir when every level of it is searchable by others (the run's uid must reach its
    files), else /tmp."""
    path = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents)):
        return str(path)
    return "/tmp"


def _tasks_of(uid: int) -> int:
    """Tasks (threads included: RLIMIT_NPROC counts them) the host uid already has."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = Path(entry.path, "status").read_text()
                uids = status.split("\nUid:", 1)[1].split()
                if int(uids[0]) == uid:
                    total += int(status.split("\nThreads:", 1)[1].split()[0])
    return total


def _namespace_members(link: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == link:
                    pids.append(int(entry.name))
    return pids


def _kill_namespace(link: str) -> None:
    """SIGKILL whatever still lives in the run's PID namespace, through pidfds (no PID-reuse race)."""
    for pid in _namespace_members(link):
        with contextlib.suppress(OSError):
            fd = os.pidfd_open(pid)
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == link:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)


class _MemoryWatch:
    """Without a memory cgroup the kernel bounds each process (RLIMIT_AS/DATA) but not their sum:
    the host adds up, every `_WATCH_S`, the proportional set (anonymous + shared memory) of every
    process in the run's PID namespace plus what its tmpfs mounts hold, and the run is killed over
    `limit` bytes. Reading /proc as root sees processes that made themselves non-dumpable too."""

    def __init__(self, limit: int):
        self.limit = limit
        self.peak = 0

    def over(self, namespace: tuple[str, int] | None) -> bool:
        if namespace is None:
            return False
        link, pid1 = namespace
        total = sum(_private_memory(pid) for pid in _namespace_members(link))
        for mount in ("tmp", "dev/shm"):
            with contextlib.suppress(OSError):
                st = os.statvfs(f"/proc/{pid1}/root/{mount}")
                total += (st.f_blocks - st.f_bfree) * st.f_frsize
        self.peak = max(self.peak, total)
        return total > self.limit


def _private_memory(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    fields = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0].rstrip(":")] = int(parts[1]) << 10
    if "Pss_Anon" in fields:
        return fields["Pss_Anon"] + fields.get("Pss_Shmem", 0)
    return fields.get("Rss", 0)


class _Cgroup:
    """A per-run cgroup for pids.max and memory where the cgroup filesystem lets us create one
    (v1 pids + memory controllers, or v2 with those controllers delegated). Otherwise a no-op that
    says why in `description`."""

    def __init__(self, memory_mb: int, max_processes: int):
        self.memory_bytes = (memory_mb + _HEADROOM_MB) << 20  # over RLIMIT_AS: the runtime itself
        self.max_processes = max_processes
        self.dirs: list[Path] = []
        self.procs_files: list[str] = []
        self.description = "unavailable"
        self._memory_dir: Path | None = None
        self._v2 = False

    def __enter__(self) -> _Cgroup:
        name = f"dsparity-sbx-{uuid.uuid4().hex[:12]}"
        try:
            if (_CGROUP_ROOT / "pids" / "pids.max").exists() or (_CGROUP_ROOT / "pids").is_dir():
                self._setup_v1(name)
            elif (_CGROUP_ROOT / "cgroup.controllers").exists():
                self._setup_v2(name)
            else:
                self.description = "unavailable: no pids cgroup controller mounted"
        except OSError as exc:
            self._remove()
            self.dirs, self.procs_files = [], []
            self.description = f"unavailable: {exc.strerror or exc}"
        return self

    def _own(self, controller: str) -> str:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path.lstrip("/")
        return ""

    @staticmethod
    def _sweep(parent: Path) -> None:
        """Remove run cgroups left behind by a killed grader (empty ones only, older than 10 min:
        a cgroup with processes cannot be removed, and a young one may be about to be joined)."""
        with contextlib.suppress(OSError):
            for old in parent.glob("dsparity-sbx-*"):
                with contextlib.suppress(OSError):
                    if time.time() - old.stat().st_mtime > 600:
                        old.rmdir()

    def _setup_v1(self, name: str) -> None:
        pids = _CGROUP_ROOT / "pids" / self._own("pids") / name
        self._sweep(pids.parent)
        pids.mkdir()
        self.dirs.append(pids)
        (pids / "pids.max").write_text(str(self.max_processes))
        self.procs_files.append(str(pids / "cgroup.procs"))
        parts = [f"pids.max={self.max_processes}"]
        mem_root = _CGROUP_ROOT / "memory"
        if mem_root.is_dir():
            try:
                mem = mem_root / self._own("memory") / name
                self._sweep(mem.parent)
                mem.mkdir()
                self.dirs.append(mem)
                (mem / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
                with contextlib.suppress(OSError):
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(self.memory_bytes))
                self.procs_files.append(str(mem / "cgroup.procs"))
                self._memory_dir = mem
                parts.append(f"memory={self.memory_bytes >> 20}MiB")
            except OSError as exc:
                parts.append(f"memory cgroup unavailable ({exc.strerror})")
        self.description = "v1 " + ", ".join(parts)

    def _setup_v2(self, name: str) -> None:
        own = ""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].lstrip("/")
        parent = _CGROUP_ROOT / own
        controllers = (parent / "cgroup.subtree_control").read_text().split()
        if "pids" not in controllers:
            raise OSError(0, "cgroup v2: pids controller not delegated to this cgroup")
        cg = parent / name
        cg.mkdir()
        self.dirs.append(cg)
        self._v2 = True
        (cg / "pids.max").write_text(str(self.max_processes))
        parts = [f"pids.max={self.max_processes}"]
        if "memory" in controllers:
            (cg / "memory.max").write_text(str(self.memory_bytes))
            with contextlib.suppress(OSError):
                (cg / "memory.swap.max").write_text("0")
            self._memory_dir = cg
            parts.append(f"memory={self.memory_bytes >> 20}MiB")
        self.procs_files.append(str(cg / "cgroup.procs"))
        self.description = "v2 " + ", ".join(parts)

    @property
    def memory_limited(self) -> bool:
        return self._memory_dir is not None

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(x) for x in Path(f).read_text().split()}
        return found

    def kill_all(self) -> None:
        """SIGKILL whatever is still in the cgroup, until it is empty (bounded)."""
        if self._v2 and self.dirs:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 5
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def oom_killed(self) -> bool:
        if self._memory_dir is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            if self._v2:
                events = (self._memory_dir / "memory.events").read_text()
                return any(
                    ln.split()[0] in ("oom_kill", "oom") and int(ln.split()[1]) > 0
                    for ln in events.splitlines()
                )
            control = (self._memory_dir / "memory.oom_control").read_text()
            for ln in control.splitlines():
                if ln.startswith("oom_kill ") and int(ln.split()[1]) > 0:
                    return True
            return int((self._memory_dir / "memory.failcnt").read_text()) > 0 and "under_oom 1" in control
        return False

    def _remove(self) -> None:
        for d in reversed(self.dirs):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.kill_all()
        self._remove()


# syscalls a test program never needs; EPERM keeps well-behaved runtimes working
_DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "syslog",
    "iopl",
    "ioperm",
    "vhangup",
)
# ENOSYS ("not in this kernel"): runtimes fall back (glibc's pthread_create to clone, libuv to its
# thread pool). memfd and SysV shared memory would hold memory outside every tmpfs size and RLIMIT.
_ABSENT_SYSCALLS = (
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "memfd_create",
    "memfd_secret",
    "shmget",
    "msgget",
)
# clone() flags that create namespaces (clone3 is absent, so its flags need no filter)
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

_SECCOMP_SCRIPT = r"""
import errno, socket, sys
import seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
denied, absent, flags = sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4].split(",")
for names, action in ((denied, seccomp.ERRNO(errno.EPERM)), (absent, seccomp.ERRNO(errno.ENOSYS))):
    for name in names:
        try:
            f.add_rule(action, name)
        except Exception:
            pass  # not a syscall on this architecture or libseccomp version
for flag in map(int, flags):
    f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
f.add_rule(seccomp.ERRNO(errno.EACCES), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
with open(sys.argv[1], "wb") as out:
    f.export_bpf(out)
"""


@functools.lru_cache(maxsize=1)
def _seccomp_program() -> bytes | None:
    """Compile the filter once with Debian's python3-seccomp (absent: no filter; namespaces still hold)."""
    if not os.access(_PYTHON, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "filter.bpf"
        try:
            subprocess.run(
                [
                    _PYTHON,
                    "-c",
                    _SECCOMP_SCRIPT,
                    str(out),
                    ",".join(_DENIED_SYSCALLS),
                    ",".join(_ABSENT_SYSCALLS),
                    ",".join(map(str, _NAMESPACE_FLAGS)),
                ],
                check=True,
                capture_output=True,
                timeout=30,
                env={"PATH": "/usr/bin:/bin"},
            )
            return out.read_bytes()
        except (subprocess.SubprocessError, OSError):
            return None


def _seccomp_fd() -> int | None:
    program = _seccomp_program()
    if not program:
        return None
    read_fd, write_fd = os.pipe()
    os.write(write_fd, program)  # a few hundred bytes: fits in the pipe buffer
    os.close(write_fd)
    return read_fd


_PREFLIGHT: dict[tuple[str | None, str], str] = {}


def preflight(language: str = "python") -> None:
    """Run a trivial program once per (bwrap, language) and raise `SandboxUnavailable` when the
    sandbox itself does not work here (e.g. user namespaces disabled): graders must not score
    every answer as wrong because of the machine."""
    key = (bwrap_path(), language)
    if key not in _PREFLIGHT:
        r = run_program(
            "print('ok')" if language == "python" else "console.log('ok')", language=language, timeout_s=20
        )
        _PREFLIGHT[key] = "" if r.status == "ok" and r.stdout.strip() == "ok" else (r.stderr or r.status)
    if _PREFLIGHT[key]:
        raise SandboxUnavailable(
            "sandbox",
            "bwrap",
            f"the sandbox does not start here: {_PREFLIGHT[key][:300]}",
            "check that unprivileged user namespaces are allowed and run `scripts/setup`",
        )


def sandbox_status() -> dict[str, Any]:
    """What the sandbox can enforce on this machine (for reports and `--help` texts)."""
    with _Cgroup(64, 16) as cg:
        cgroup = cg.description
    return {
        "bwrap": bwrap_path(),
        "python": os.access(_PYTHON, os.X_OK),
        "node": os.access("/usr/bin/node", os.X_OK),
        "seccomp": _seccomp_program() is not None,
        "cgroup": cgroup,
        "run_uid": "fresh per run" if os.geteuid() == 0 else "the grader's own",
    }
