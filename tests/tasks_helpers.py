"""Shared by the task-suite tests: generation settings that stay fast, and a scripted oracle."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFLINE_SUITES = ["reasoning", "coding", "writing", "longctx", "article"]


def cli(*args: str):
    """Run a `dsparity` command in-process (faster than a subprocess); (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from dsparity.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def real_tokenizer_dir() -> Path | None:
    """The embedded default model's cached safetensors copy, when this machine has it."""
    root = Path(os.environ.get("DSPARITY_CACHE") or Path.home() / ".cache" / "dsparity")
    folder = root / "smollm2-135m-instruct" / "safetensors"
    return folder if (folder / "tokenizer.json").exists() else None


def fast_env(tmp_path: Path, tokenizer_dir: Path) -> dict[str, str]:
    """Generated suites small and quick: a private cache, one short length, a given tokenizer."""
    return {"DSPARITY_TASK_CACHE": str(tmp_path / "task-cache"),
            "DSPARITY_TOKENIZER": str(tokenizer_dir),
            "DSPARITY_LONGCTX_LENGTHS": "1024"}


def oracle_answers(tasks) -> dict[str, str]:
    """prompt -> an answer that the task's grader should accept (where one can be scripted)."""
    answers = {}
    for spec in tasks:
        for item in spec.items:
            prompt, doc = item.request.messages[-1][1], item.doc
            if spec.grader == "code":
                text = f"```python\n{doc['prompt']}{doc['canonical_solution']}```"
            elif spec.grader == "stdio":
                text = f"```python\n{doc['reference_solution']}```"
            elif spec.grader in ("exact", "math", "needle", "choice"):
                text = f"Let me think.\nAnswer: {item.target}"
            elif spec.grader == "web":
                text = ("```html\n<!doctype html><html><body><canvas id=c></canvas><script>"
                        "const c=document.getElementById('c').getContext('2d');let t=0;"
                        "function f(){t++;c.fillStyle=`hsl(${t%360},80%,50%)`;c.fillRect(0,0,300,150);"
                        "requestAnimationFrame(f)}f();</script></body></html>\n```")
            else:
                text = "A short answer written by the scripted model."
            answers[prompt] = text
    return answers


def scripted_oracle(answers: dict[str, str]):
    def answer(prompt: str) -> str:
        if "Reply with one JSON object" in prompt:  # a judge request
            if '"verdict"' in prompt:
                return json.dumps({"verdict": "tie", "reason": "scripted"})
            if '{"items"' in prompt:  # a checklist: one yes per numbered item
                listing = prompt.rsplit("## Checklist", 1)[1]
                n = len(re.findall(r"^\d+\. ", listing, flags=re.M))
                return json.dumps({"items": [{"item": str(i + 1), "ok": True, "reason": "scripted"}
                                             for i in range(n)]})
            return json.dumps({"score": 7, "reason": "scripted"})
        return answers.get(prompt, "I do not know.")

    return answer
