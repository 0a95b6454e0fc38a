"""Regenerate haystack.json.gz: `python tasks/longctx/make_haystack.py`.

The long-context haystack is installed text: docstrings of Python's standard library (PSF
licence), collected from a fixed list of modules in a fixed order. It is committed (compressed)
rather than read at run time so that every machine builds the same items whatever its Python
patch version; `source` in the file records the interpreter it came from.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import json
import platform
import re
from pathlib import Path

MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "lzma", "mailbox", "math",
    "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib",
    "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random",
    "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
    "zoneinfo",
]
TARGET_CHARS = 900_000


def prose(doc: str) -> str:
    """Keep prose paragraphs: drop doctest lines and code-like or very short paragraphs."""
    keep = []
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in para.splitlines() if ln.strip() and not ln.strip().startswith(
            (">>>", "...", "$", "%"))]
        text = " ".join(lines)
        letters = sum(c.isalpha() or c == " " for c in text)
        if len(text) >= 40 and letters / len(text) > 0.8:
            keep.append(text)
    return "\n".join(keep)


def documents() -> list[dict]:
    docs, seen = [], set()
    for name in MODULES:
        mod = importlib.import_module(name)
        objects = [(name, mod)]
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                    getattr(obj, "__module__", "").split(".")[0] == name.split(".")[0]:
                objects.append((f"{name}.{attr}", obj))
        for title, obj in objects:
            text = prose(inspect.getdoc(obj) or "")
            digest = hashlib.sha256(text.encode()).hexdigest()
            if len(text) < 120 or digest in seen:
                continue
            seen.add(digest)
            docs.append({"title": title, "text": text})
    return docs


def main() -> None:
    docs, total = [], 0
    for doc in documents():
        docs.append(doc)
        total += len(doc["text"])
        if total >= TARGET_CHARS:
            break
    out = Path(__file__).with_name("haystack.json.gz")
    blob = json.dumps({"source": f"Python {platform.python_version()} standard library docstrings",
                       "documents": docs}, ensure_ascii=False, indent=0, sort_keys=True)
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(blob.encode())
    print(f"{len(docs)} documents, {total} characters -> {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
