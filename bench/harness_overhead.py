"""Client-side overhead of the harness: dsparity vs lm-eval's `local-chat-completions`.

1,000 short requests to one fast loopback server (bench/fast_server.py, its own process) at
concurrency 32, both clients in the same run. dsparity's time includes everything a real run
does: task items, the response cache lookup, one durable SQLite write per sample and grading.
lm-eval's time is its model's `generate_until` alone (no store), so the comparison flatters it.

Three clients: a whole dsparity run, dsparity's openai backend alone (the transport: the same
bare requests lm-eval sends) and lm-eval. Two figures for each, the best of `--trials` runs
taken in turns (the one a busy machine disturbed least): wall time per request, which includes
waiting for the server, and the client's own CPU time per request (every thread of this
process; the server is another process), the harness overhead proper, steadier on a shared
machine.

    .venv/bin/python bench/harness_overhead.py [--requests 1000] [--concurrency 32] [--trials 3] [--json]
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


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_dsparity(base_url: str, n: int, concurrency: int, workdir: Path) -> tuple[float, float]:
    from dsparity.evals.runner import RunSettings, execute_run
    from dsparity.evals.specs import parse_spec
    from dsparity.evals.storage.store import Store
    from dsparity.evals.tasks import load_tasks

    tasks = load_tasks(names=["bulk"], include=[make_tasks(workdir, n)])
    store = Store(f"sqlite:///{workdir / 'bench.db'}")
    spec = parse_spec(f"openai:m@{base_url}?concurrency={concurrency}")
    results = []
    took = timed(lambda: results.append(asyncio.run(execute_run(spec, tasks, RunSettings(suite="bulk"),
                                                                store, show_progress=False))))
    assert results[0].sent == n and results[0].errors == 0, results[0]
    return took


def run_backend(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    """dsparity's openai backend alone, the same requests as lm-eval's: the transport."""
    from dsparity.evals.backends import make_backend
    from dsparity.evals.backends.base import Request
    from dsparity.evals.specs import parse_spec

    requests = [Request(messages=(("user", f"Item {i}: what is 40 + 2?"),), max_tokens=8, stop=("\n\n",))
                for i in range(n)]
    out = []

    async def go() -> None:
        backend = make_backend(parse_spec(f"openai:m@{base_url}?concurrency={concurrency}"))
        await backend.start()
        try:
            out.extend(await asyncio.gather(*(backend.generate(r) for r in requests)))
        finally:
            await backend.close()

    took = timed(lambda: asyncio.run(go()))
    assert len(out) == n and all(c.text == "42" for c in out)
    return took


def run_lm_eval(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalChatCompletion

    lm = LocalChatCompletion(base_url=f"{base_url}/chat/completions", model="m", tokenizer_backend=None,
                             num_concurrent=concurrency, max_retries=1)
    requests = [Instance("generate_until", {}, ([{"role": "user", "content": f"Item {i}: what is 40 + 2?"}],
                                                {"until": ["\n\n"], "max_gen_toks": 8}), i)
                for i in range(n)]
    out: list[str] = []
    took = timed(lambda: out.extend(lm.generate_until(requests, disable_tqdm=True)))
    assert len(out) == n and all(o == "42" for o in out)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.requests
    proc, url = start_server()
    runs: dict[str, list[tuple[float, float]]] = {"dsparity": [], "backend": [], "lm_eval": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dsparity(url, 50, args.concurrency, Path(tmp) / "warm")  # imports and connections
            run_lm_eval(url, 50, args.concurrency)
            for trial in range(args.trials):
                runs["dsparity"].append(run_dsparity(url, n, args.concurrency, Path(tmp) / f"run{trial}"))
                runs["backend"].append(run_backend(url, n, args.concurrency))
                runs["lm_eval"].append(run_lm_eval(url, n, args.concurrency))
    finally:
        proc.terminate()
    ms = {name: {"wall": round(1000 * min(w for w, _ in took) / n, 3),
                 "cpu": round(1000 * min(c for _, c in took) / n, 3)} for name, took in runs.items()}
    result = {"requests": n, "concurrency": args.concurrency, "trials": args.trials, "ms_per_request": ms,
              "transport_cpu_ratio": round(ms["backend"]["cpu"] / ms["lm_eval"]["cpu"], 2),
              "end_to_end_cpu_ratio": round(ms["dsparity"]["cpu"] / ms["lm_eval"]["cpu"], 2),
              "end_to_end_wall_ratio": round(ms["dsparity"]["wall"] / ms["lm_eval"]["wall"], 2)}
    print(f"{n} requests at concurrency {args.concurrency} against one loopback server, "
          f"best of {args.trials} trials each")
    print(f"  {'':48}wall ms/request  client CPU ms/request")
    for name, label in (("dsparity", "dsparity run (store + grading included):"),
                        ("backend", "dsparity openai backend alone (the transport):"),
                        ("lm_eval", "lm-eval local-chat-completions:")):
        print(f"  {label:48}{ms[name]['wall']:15.2f}  {ms[name]['cpu']:21.2f}")
    print(f"  client CPU against lm-eval's: transport {result['transport_cpu_ratio']:.2f}x, whole run "
          f"{result['end_to_end_cpu_ratio']:.2f}x (wall {result['end_to_end_wall_ratio']:.2f}x)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
