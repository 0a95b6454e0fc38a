"""The CDN libraries generated web pages load (p5.js 1.x/2.x, three.js, Tone.js), vendored from the
npm registry into a cache folder and answered from disk by the web grader's request router.

Where: `$DSPARITY_WEB_LIBS` if set, else `<cache>/web-libs` with `<cache>` = `$DSPARITY_CACHE` or
`~/.cache/dsparity` (`dsparity.cache.cache_root`): never the source tree, so an installed wheel and a
second checkout find the same copies. What: `web-libs.txt` beside this file, one NAME@VERSION a line,
each unpacked (`npm pack`) into `NAME@VERSION/`.

`python -m dsparity.evals.graders.weblibs fetch [--reuse DIR]` vendors what is missing (`scripts/setup`
runs it; `--reuse` copies folders already unpacked elsewhere, e.g. an old in-tree `.cache/web-libs`,
instead of downloading them again); `... status` lists each library and whether it is there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from dsparity.cache import cache_root
from dsparity.errors import DsparityError

WEB_LIBS_ENV = "DSPARITY_WEB_LIBS"
FETCH_COMMAND = "python -m dsparity.evals.graders.weblibs fetch"


def _read_libs() -> dict[str, tuple[str, ...]]:
    """web-libs.txt as {name: versions, oldest first}."""
    libs: dict[str, list[str]] = {}
    for line in (Path(__file__).parent / "web-libs.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().rpartition("@")
            libs.setdefault(name, []).append(version)
    key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v))  # noqa: E731
    return {name: tuple(sorted(vs, key=key)) for name, vs in libs.items()}


WEB_LIBS = _read_libs()


def web_libs_dir() -> Path:
    env = os.environ.get(WEB_LIBS_ENV)
    return Path(env) if env else cache_root() / "web-libs"


def web_libs_status() -> dict[str, bool]:
    root = web_libs_dir()
    return {
        f"{name}@{v}": (root / f"{name}@{v}" / "package.json").exists()
        for name, versions in WEB_LIBS.items()
        for v in versions
    }


def fetch_hint(library: str) -> str:
    """The one line a grade shows when a page asked for a library that is not vendored."""
    return (
        f"{library} is not vendored in {web_libs_dir()}: run `{FETCH_COMMAND}` (needs npm and the "
        f"registry; `scripts/setup` does it in a checkout) or point ${WEB_LIBS_ENV} at a folder that has it"
    )


# ------------------------------------------------------------------------------------------------
# CDN URL -> vendored file

_CDNJS = re.compile(r"/ajax/libs/(?P<pkg>[\w.\-]+)/(?P<ver>[^/]+)/(?P<path>.+)$")
_NPM = re.compile(r"/(?:npm/)?(?P<pkg>p5|three|tone)(?:@(?P<ver>[^/]+))?(?:/(?P<path>.*))?$", re.IGNORECASE)
_CDNJS_NAMES = {"p5.js": "p5", "p5": "p5", "three.js": "three", "three": "three", "tone": "tone"}
_CDNJS_NAMES["tone.js"] = "tone"
_ENTRY = {"p5": "lib/p5.min.js", "three": "build/three.module.js", "tone": "build/Tone.js"}
# file names that say which library a URL on an unknown host wants (p5.sound.min.js, three.module.js ...)
_BASENAMES = (
    ("p5", re.compile(r"^p5(\.\w+)*\.js$")),
    ("three", re.compile(r"^three(\.\w+)*\.m?js$")),
    ("tone", re.compile(r"^tone(\.min)?\.js$", re.IGNORECASE)),
)


@dataclass(frozen=True)
class LibraryRequest:
    """What a URL asks for: `library` (NAME@VERSION of the vendored copy that answers it) and the file."""

    url: str
    library: str | None  # None: not a library we vendor
    file: Path | None  # None: not vendored here (then `library` says what is missing)


def _major(pkg: str, ver: str | None, path: str) -> str:
    versions = WEB_LIBS[pkg]
    if pkg == "p5":
        return versions[1] if ver and re.match(r"[\^~]?2", ver) else versions[0]
    if pkg == "three":
        m = re.search(r"(?:0\.|r)(\d+)", ver or "")
        num = int(m.group(1)) if m else None
        umd = path.endswith(("three.min.js", "three.js")) and "module" not in path
        if umd or (num is not None and num <= 160) or "examples/js/" in path:
            return versions[0]
        return versions[1]
    return versions[0]


def library_request(url: str) -> LibraryRequest:
    """The vendored library and file that answer a CDN URL (file None when not vendored here)."""
    path = urlparse(url).path
    root = web_libs_dir()
    pkg = ver = inner = None
    if m := _CDNJS.search(path):
        pkg = _CDNJS_NAMES.get(m.group("pkg").lower())
        ver, inner = m.group("ver"), m.group("path")
    elif m := _NPM.search(path):
        pkg, ver, inner = m.group("pkg").lower(), m.group("ver"), m.group("path") or ""
    if pkg is None:
        return _by_basename(url, Path(path).name, root)
    version = _major(pkg, ver, inner or "")
    base = root / f"{pkg}@{version}"
    inner = (inner or "").strip("/")
    if inner in ("", "+esm") or inner.startswith("+esm"):
        inner = _ENTRY[pkg]
    candidates = [inner, f"lib/{inner}", f"build/{inner}"]
    if pkg == "three" and not inner.endswith(".js") and "examples/jsm/" in inner:
        candidates.append(inner + ".js")
    for cand in candidates:
        f = (base / cand).resolve()
        if base.resolve() in f.parents and f.is_file():
            return LibraryRequest(url, f"{pkg}@{version}", f)
    if not (base / "package.json").exists():
        return LibraryRequest(url, f"{pkg}@{version}", None)
    found = _by_basename(url, Path(inner).name, root) if inner else None
    return found if found and found.file else LibraryRequest(url, None, None)


def resolve_library(url: str) -> Path | None:
    """The vendored file that answers a CDN URL, or None (then the request is blocked)."""
    return library_request(url).file


def _by_basename(url: str, name: str, root: Path) -> LibraryRequest:
    """A library file of that exact name in the vendored lib/ or build/ folders (p5 1.x first)."""
    if not name.endswith((".js", ".mjs")):
        return LibraryRequest(url, None, None)
    for pkg, versions in WEB_LIBS.items():
        for v in versions:
            base = root / f"{pkg}@{v}"
            for sub in ("lib", "lib/addons", "build"):
                f = base / sub / name
                if f.is_file():
                    return LibraryRequest(url, f"{pkg}@{v}", f)
    for pkg, pattern in _BASENAMES:
        wanted = f"{pkg}@{WEB_LIBS[pkg][0]}"
        if pattern.match(name) and not (root / wanted / "package.json").exists():
            return LibraryRequest(url, wanted, None)
    return LibraryRequest(url, None, None)


# ------------------------------------------------------------------------------------------------
# vendoring


def fetch(reuse: Path | None = None, *, npm: str | None = None) -> list[str]:
    """Vendor every library of web-libs.txt that is missing; returns what was added. Each one is
    unpacked beside its final place and renamed into it, so an interrupted fetch leaves no half folder."""
    root = web_libs_dir()
    missing = [lib for lib, ok in web_libs_status().items() if not ok]
    if not missing:
        return []
    root.mkdir(parents=True, exist_ok=True)
    added = []
    for lib in list(missing):
        src = reuse / lib if reuse else None
        if src and (src / "package.json").is_file():
            part = root / f"{lib}.part"
            shutil.rmtree(part, ignore_errors=True)
            shutil.copytree(src, part, symlinks=False)
            _install(part, root / lib)
            missing.remove(lib)
            added.append(lib)
    if missing:
        added += _npm_pack(missing, root, npm or shutil.which("npm"))
    return added


def _npm_pack(libs: list[str], root: Path, npm: str | None) -> list[str]:
    if npm is None:
        raise DsparityError(
            "web-libs", "npm", "npm is not installed", "apt-get install npm (or run scripts/setup)"
        )
    with tempfile.TemporaryDirectory(prefix="dsparity-npm-") as packs:
        done = subprocess.run([npm, "pack", "--silent", *libs], cwd=packs, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DsparityError(
                "web-libs", "npm pack", f"failed: {tail[0][:200]}", "check the npm registry is reachable"
            )
        for lib in libs:
            name, _, version = lib.rpartition("@")
            part = root / f"{lib}.part"
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir()
            with tarfile.open(Path(packs) / f"{name}-{version}.tgz") as tar:
                for member in tar.getmembers():
                    member.name = member.name.partition("/")[2]  # npm packs everything under package/
                    inside = member.name and ".." not in Path(member.name).parts
                    if inside and (member.isfile() or member.isdir()):
                        tar.extract(member, part, **_SAFE)
            _install(part, root / lib)
    return libs


_SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # no links, no absolute paths


def _install(part: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    part.rename(final)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:
        for lib, ok in web_libs_status().items():
            print(f"{lib}: {'ok' if ok else 'missing'}")
        print(f"folder: {web_libs_dir()}")
        return 0 if all(web_libs_status().values()) else 1
    if args[:1] == ["fetch"] and len(args) in (1, 3) and (len(args) == 1 or args[1] == "--reuse"):
        try:
            added = fetch(Path(args[2]) if len(args) == 3 else None)
        except DsparityError as exc:
            print(exc, file=sys.stderr)
            return 1
        done = f"added {' '.join(added)}" if added else "all present"
        print(f"web libraries in {web_libs_dir()}: {done}")
        return 0
    usage = f"{FETCH_COMMAND} [--reuse DIR] | python -m dsparity.evals.graders.weblibs status"
    print(f"usage: {usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
