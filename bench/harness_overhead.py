"""Client-side overhead of the harness: dsparity vs lm-eval's `local-chat-completions`.

1,000 short requests to one fast loopback server (bench/fast_server.py, its own process) at
concurrency 32, both clients in the same run. dsparity's time includes everything a real run
does: task items, the response cache lookup, one durable SQLite write per sample and grading.
lm-eval's time is its model's `generate_until` alone (no store), so the comparison flatters it.

    .venv/bin/python bench/harness_overhead.py [--requests 1000] [--concurrency 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fast_server.py"), str(port)])
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/v1"


def make_tasks(folder: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from task_folders import make_suite

    return make_suite(folder / "bulk", n)


def run_dsparity(base_url: str, n: int, concurrency: int, workdir: Path) -> float:
    from dsparity.evals.runner import RunSettings, execute_run
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.store import Store
    from dsparity.evals.tasks import load_tasks

    tasks = load_tasks(names=["bulk"], include=[make_tasks(workdir, n)])
    store = Store(f"sqlite:///{workdir / 'bench.db'}")
    spec = parse_spec(f"openai:m@{base_url}?concurrency={concurrency}")
    start = time.perf_counter()
    result = asyncio.run(execute_run(spec, tasks, RunSettings(suite="bulk"), store, show_progress=False))
    elapsed = time.perf_counter() - start
    assert result.sent == n and result.errors == 0, result
    return elapsed


def run_lm_eval(base_url: str, n: int, concurrency: int) -> float:
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalChatCompletion

    lm = LocalChatCompletion(base_url=f"{base_url}/chat/completions", model="m", tokenizer_backend=None,
                             num_concurrent=concurrency, max_retries=1)
    requests = [Instance("generate_until", {}, ([{"role": "user", "content": f"Item {i}: what is 40 + 2?"}],
                                                {"until": ["\n\n"], "max_gen_toks": 8}), i)
                for i in range(n)]
    start = time.perf_counter()
    out = lm.generate_until(requests)
    elapsed = time.perf_counter() - start
    assert len(out) == n and all(o == "42" for o in out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    proc, url = start_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dsparity(url, 50, args.concurrency, Path(tmp) / "warm")  # imports and connections
            t_dsparity = run_dsparity(url, args.requests, args.concurrency, Path(tmp) / "run")
        t_lm_eval = run_lm_eval(url, args.requests, args.concurrency)
    finally:
        proc.terminate()
    n = args.requests
    result = {"requests": n, "concurrency": args.concurrency,
              "dsparity_s": round(t_dsparity, 3), "lm_eval_s": round(t_lm_eval, 3),
              "dsparity_ms_per_request": round(1000 * t_dsparity / n, 3),
              "lm_eval_ms_per_request": round(1000 * t_lm_eval / n, 3),
              "speedup": round(t_lm_eval / t_dsparity, 2)}
    print(f"{n} requests at concurrency {args.concurrency} against one loopback server")
    print(f"  dsparity (store + grading included): {t_dsparity:7.2f} s  "
          f"{result['dsparity_ms_per_request']:.2f} ms/request")
    print(f"  lm-eval local-chat-completions:      {t_lm_eval:7.2f} s  "
          f"{result['lm_eval_ms_per_request']:.2f} ms/request")
    print(f"  dsparity is {result['speedup']:.2f}x faster end to end (target >= 1.5x)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
