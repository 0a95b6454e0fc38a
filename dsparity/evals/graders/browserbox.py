"""The sandbox the web grader runs Chromium in (bubblewrap), as an argv any program can be started with.

Chromium runs with all namespaces unshared (its own loopback only), a cleared environment, and as an
unprivileged user that owns none of the host's files: a grader running as root first drops to uid
65534 with `setpriv`, so the user namespace bubblewrap creates maps that uid, never root (mapping
root made every root-only file, /etc/shadow included, the sandbox user's own). The sandbox sees
read-only `/usr`, the font configuration and caches, the dynamic linker cache and Debian's Chromium
launcher settings (`_SYSTEM_FILES`, from an strace of a render), and nothing else of the host: no
other /etc file, no /root, /home or /var beyond the font cache, no checkout, no results. Its /tmp
(the Playwright profile folder included) is a private tmpfs. Inside, Chromium keeps its own sandbox
(namespaces + seccomp-bpf) where the kernel allows a nested user namespace; otherwise it runs with
`--no-sandbox` and bubblewrap forbids user namespaces instead (`nested_userns=False`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from dsparity.errors import DsparityError
from dsparity.evals.graders.sandbox import SANDBOX_UID, bwrap_path

SETPRIV = "/usr/bin/setpriv"
# what Chromium and Debian's launcher read outside /usr (strace of a render): nothing else of the host
_SYSTEM_FILES = (
    "/etc/fonts",
    "/etc/ld.so.cache",
    "/etc/chromium.d",
    "/etc/chromium",
    "/var/cache/fontconfig",
    "/sys/devices/system/cpu",
)


class BrowserUnavailable(DsparityError):
    """No system Chromium, Playwright or working browser sandbox: web artifacts cannot be rendered."""


def sandbox_prefix(*, nested_userns: bool = True, mounts: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The argv, up to the program, that runs a program where the grader runs Chromium.

    As root: `setpriv` to uid/gid 65534 with no groups, no capabilities and no new privileges first,
    so the user namespace bubblewrap then creates maps 65534, which owns nothing on the host (as the
    grader's own uid otherwise: none of its files are bound in). `nested_userns` leaves Chromium able
    to build its own sandbox (a user namespace of its own); without it bubblewrap forbids them.
    `mounts`: more bubblewrap mount options, applied before the root is made read-only.
    """
    bwrap = bwrap_path()
    if bwrap is None:
        raise BrowserUnavailable(
            "web",
            "bwrap",
            "bubblewrap is not installed: pages are never rendered outside their sandbox",
            "run `scripts/setup` or `apt-get install bubblewrap`",
        )
    drop: list[str] = []
    if os.geteuid() == 0:
        if not os.access(SETPRIV, os.X_OK):
            raise BrowserUnavailable(
                "web", "setpriv", f"{SETPRIV} is missing (util-linux)", "apt-get install util-linux"
            )
        uid = str(SANDBOX_UID)
        drop = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
        drop += ["--bounding-set=-all", "--no-new-privs", "--"]
    box = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv"]
    box += ["--cap-drop", "ALL", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for link, target in (
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
    ):
        box += ["--symlink", target, link]
    for path in _SYSTEM_FILES:
        box += ["--ro-bind-try", path, path]
    box += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/run", "--tmpfs", "/tmp"]
    box += ["--dir", "/tmp/home", "--chdir", "/tmp/home", *mounts, "--remount-ro", "/"]
    for name, value in (("HOME", "/tmp/home"), ("PATH", "/usr/bin:/bin"), ("TZ", "UTC"), ("LANG", "C.UTF-8")):
        box += ["--setenv", name, value]
    if not nested_userns:
        box += ["--disable-userns"]
    return drop + box


_CHECKED: dict[str, str] = {}


def check_sandbox() -> None:
    """Start the sandbox once (per process) with a trivial program; raise `BrowserUnavailable` with
    bubblewrap's own words when it cannot start here (e.g. user namespaces disabled)."""
    prefix = sandbox_prefix()
    key = " ".join(prefix)
    if key not in _CHECKED:
        try:
            done = subprocess.run([*prefix, "/bin/true"], capture_output=True, text=True, timeout=30)
            _CHECKED[key] = "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            _CHECKED[key] = str(exc)
    if _CHECKED[key]:
        raise BrowserUnavailable(
            "web",
            "bwrap",
            f"the browser sandbox does not start here: {_CHECKED[key][:300]}",
            "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
            "kernel.unprivileged_userns_clone=1 where it exists)",
        )


def write_launcher(folder: Path, chromium: str, sandbox: bool, nested_userns: bool) -> tuple[Path, Path]:
    """(launcher, pid file): a script Playwright starts as "the browser". It records its pid (the
    watchdog's handle: killing bubblewrap tears the whole sandbox down) and execs Chromium in the
    sandbox. Playwright keeps the profile in the folder named by --user-data-dir: inside the sandbox
    that folder is a fresh tmpfs, so the host's copy stays empty and nothing of the page is written out."""
    pid_file = folder / "browser.pid"
    script = folder / "chromium-launcher"
    head = f"#!/bin/sh\necho $$ > {shlex.quote(str(pid_file))}\n"
    if not sandbox:
        script.write_text(head + f'exec {shlex.quote(chromium)} "$@"\n')
    else:
        mark = "@PROFILE@"  # Playwright names the profile folder at launch: the script fills it in
        argv = sandbox_prefix(nested_userns=nested_userns, mounts=("--tmpfs", mark))
        prefix = " ".join('"$profile"' if a == mark else shlex.quote(a) for a in argv)
        script.write_text(
            head
            + 'profile=""\n'
            + 'for a in "$@"; do\n'
            + '  case "$a" in --user-data-dir=*) profile="${a#--user-data-dir=}";; esac\n'
            + "done\n"
            + '[ -n "$profile" ] || { echo "no --user-data-dir" >&2; exit 1; }\n'
            + f'exec {prefix} {shlex.quote(chromium)} "$@"\n'
        )
    script.chmod(0o755)
    return script, pid_file
