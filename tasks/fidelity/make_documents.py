"""Regenerate documents.jsonl.gz: `python tasks/fidelity/make_documents.py`.

The fidelity suite's held-out documents, committed (compressed) so every machine scores the same
text whatever its Python patch version. Three kinds, all licence-clean and installed text:

- prose: Python's language reference as pydoc ships it (`pydoc_data.topics`, PSF licence),
  topics concatenated in alphabetical order into documents of at least MIN_CHARS;
- code: standard-library modules from the indexer corpus's *held-out* split
  (`dsparity.model.corpus`, split by a hash of the path), so the warm-up never trains on them;
- legal: licence texts from Debian's /usr/share/common-licenses (verbatim copying permitted).

None of these is in the indexer's training text: the warm-up reads only the corpus's train split,
and `dsparity.model.corpus` excludes `pydoc_data` and every file named here (FIDELITY_SOURCES).
"""

from __future__ import annotations

import gzip
import json
import platform
import sys
from pathlib import Path

MIN_CHARS = 40_000  # about 9-10K tokens of prose for SmolLM2's tokenizer: cut to 8K at load
CODE_MODULES = ["_collections_abc.py", "_pyio.py", "asyncio/unix_events.py", "datetime.py",
                "functools.py", "http/server.py", "inspect.py", "multiprocessing/connection.py",
                "pickletools.py", "random.py", "urllib/parse.py", "urllib/request.py",
                "xmlrpc/client.py"]
LICENCES = ["GPL-3", "LGPL-2.1", "GFDL-1.3", "GPL-2", "MPL-2.0", "Apache-2.0"]


def prose_documents() -> list[dict]:
    import pydoc_data.topics as topics

    docs, parts, titles = [], [], []
    for name in sorted(topics.topics):
        parts.append(topics.topics[name].strip())
        titles.append(name)
        if sum(len(p) for p in parts) >= MIN_CHARS:
            docs.append(_doc("prose", f"Python reference: {titles[0]} .. {titles[-1]}",
                             "pydoc_data.topics (Python documentation, PSF licence)", "\n\n".join(parts)))
            parts, titles = [], []
    return docs


def code_documents() -> list[dict]:
    import sysconfig

    from dsparity.model.corpus import stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    held_out = {p.relative_to(root).as_posix() for p in stdlib_files("heldout")}
    docs = []
    for rel in CODE_MODULES:
        assert rel in held_out, f"{rel} is not in the indexer corpus's held-out split"
        text = (root / rel).read_text(encoding="utf-8")
        docs.append(_doc("code", f"Lib/{rel}", "CPython standard library (PSF licence)", text))
    return docs


def legal_documents() -> list[dict]:
    root = Path("/usr/share/common-licenses")
    return [_doc("legal", name, f"{root / name} (verbatim copying permitted)",
                 (root / name).read_text(encoding="utf-8")) for name in LICENCES]


def _doc(kind: str, title: str, source: str, text: str) -> dict:
    return {"kind": kind, "title": title, "source": source, "text": text}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    docs = prose_documents() + code_documents() + legal_documents()
    out = Path(__file__).with_name("documents.jsonl.gz")
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(json.dumps({"made_with": f"Python {platform.python_version()}", "documents": len(docs)})
                + "\n")
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    print(f"{out}: {len(docs)} documents, {out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
