"""The program's parent inside the sandbox: the only trusted witness of how the program ended.

Run by Debian's /usr/bin/python3 inside the bubblewrap sandbox (stdlib only, no dsparity imports):

    python3 supervise.py REPORT_FD -- PROGRAM [ARGS...]       # any program: fork, exec
    python3 -E -s -B supervise.py REPORT_FD --python SCRIPT [ARGS...]

It makes itself non-dumpable, so the program (same uid, no capabilities) can neither open its
/proc/PID/fd or /proc/PID/mem nor ptrace it (seccomp denies ptrace too); becomes the child
subreaper, so orphaned grandchildren are reaped here and their CPU time and peak memory count; ignores
every catchable signal the program could send it; then forks the program and waits. The report —
exit code or signal, CPU seconds, peak resident set — is written to REPORT_FD, a pipe the program
never holds (closed in the child before the program runs). What the program prints never decides
how it ended: a program that kills this process only loses its report.

`--python` runs a Python script in the forked child itself, as `python3 -E -s -B SCRIPT ARGS`
would (same flags, a fresh `__main__`, the script's directory first on sys.path, Python's own
signal dispositions, the same traceback and exit status on an uncaught exception), without paying
for a second interpreter start-up.
"""

# no `from __future__` here: compile() in _run_python would pass its flags on to the program
import _signal  # not `signal`: its enum import doubles this process's start-up time
import builtins
import ctypes
import os
import sys

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
_UNTOUCHABLE = (9, 17, 19)  # SIGKILL and SIGSTOP cannot be caught; SIGCHLD must stay default for wait4


def _signals() -> list[int]:
    found = []
    for s in range(1, _signal.NSIG):
        if s not in _UNTOUCHABLE:
            try:  # noqa: SIM105  (contextlib would slow this start-up)
                _signal.signal(s, _signal.getsignal(s))  # signals the C library reserves raise here
                found.append(s)
            except (OSError, ValueError, TypeError):
                pass
    return found


def _exec_program(argv: list[str]) -> None:
    for s in _signals():  # the program starts with default dispositions, as if run directly
        _signal.signal(s, _signal.SIG_DFL)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        os.write(2, f"supervise: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)


def _run_python(script: str, args: list[str]) -> None:
    """Become `python3 SCRIPT ARGS` in this (forked) interpreter; returns only by raising SystemExit."""
    from importlib.machinery import SourceFileLoader  # frozen: already loaded at start-up

    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(script)
    main = type(sys)("__main__")
    main.__file__, main.__cached__, main.__builtins__ = script, None, builtins
    main.__loader__ = SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec")
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)  # from the program's frames on
        raise SystemExit(1) from None
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    report_fd, mode, program = int(argv[1]), argv[2], argv[3:]
    os.set_inheritable(report_fd, False)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(2, b"supervise: prctl failed\n")
        return 126  # no report: the run cannot be witnessed, so it is never scored as passing
    signals = _signals()
    saved = {s: _signal.getsignal(s) for s in signals}
    for s in signals:
        _signal.signal(s, _signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        os.close(report_fd)
        if mode != "--python":
            _exec_program(program)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as an exec would have left it
        for s, handler in saved.items():
            _signal.signal(s, handler)
        _run_python(program[0], program[1:])
    cpu, maxrss_kb = 0.0, 0
    while True:
        try:
            done, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return 126
        cpu += usage.ru_utime + usage.ru_stime
        maxrss_kb = max(maxrss_kb, usage.ru_maxrss)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        how, code = f'"signal": {os.WTERMSIG(status)}', 128 + os.WTERMSIG(status)
    else:
        how, code = f'"exit": {os.WEXITSTATUS(status)}', os.WEXITSTATUS(status)
    os.write(report_fd, f'{{{how}, "cpu_s": {cpu:.4f}, "maxrss_kb": {maxrss_kb}}}\n'.encode())  # JSON
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
