"""The program's parent inside the sandbox: the only trusted witness of how the program ended.

Run by Debian's /usr/bin/python3 inside the bubblewrap sandbox (stdlib only, no dsparity imports):

    python3 supervise.py REPORT_FD -- PROGRAM [ARGS...]

It makes itself non-dumpable, so the program (same uid, no capabilities) can neither open its
/proc/PID/fd or /proc/PID/mem nor ptrace it (seccomp denies ptrace too); becomes the child
subreaper, so orphaned grandchildren are reaped here and their CPU time and peak memory count; ignores
every catchable signal the program could send it; then forks the program and waits. The report —
exit code or signal, CPU seconds, peak resident set — is written to REPORT_FD, a pipe the program
never holds (close-on-exec here, and the launcher passes it to nobody else). What the program prints
never decides how it ended: a program that kills this process only loses its report.
"""

import _signal  # not `signal`: its enum import doubles this process's start-up time
import ctypes
import os
import sys

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
_UNTOUCHABLE = (9, 17, 19)  # SIGKILL and SIGSTOP cannot be caught; SIGCHLD must stay default for wait4


def _set_all(handler) -> None:
    for s in range(1, _signal.NSIG):
        if s not in _UNTOUCHABLE:
            try:  # noqa: SIM105  (contextlib would slow this start-up)
                _signal.signal(s, handler)
            except (OSError, ValueError):
                pass  # signals the C library reserves for itself


def _exec_program(argv: list[str]) -> None:
    _set_all(_signal.SIG_DFL)  # the program starts with default dispositions, as if run directly
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        os.write(2, f"supervise: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)


def main(argv: list[str]) -> int:
    report_fd, program = int(argv[1]), argv[3:]
    os.set_inheritable(report_fd, False)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(2, b"supervise: prctl failed\n")
        return 126  # no report: the run cannot be witnessed, so it is never scored as passing
    _set_all(_signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        _exec_program(program)
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
