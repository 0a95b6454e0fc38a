"""The `local` backend: a transformers model in this process (dense or DSA).

Concurrent requests are queued and, where the model allows it, batched: greedy requests with the
same stop strings run together with left padding (up to `max_batch`, default 1 on CPU where one
sequence already uses every core, 8 on CUDA). Everything else runs one at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion, Request, ScoreRequest, Usage
from dsparity.evals.specs import ModelSpec


class LocalBackend:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = None
        self.tokenizer = None
        self.max_batch = int(spec.opt("max_batch", 0))  # 0: decided by the device at load
        self.concurrency = 1
        self.identity: dict[str, Any] = {"kind": "local", "model": spec.name,
                                         "options": {k: v for k, v in spec.options.items()
                                                     if k in ("attention", "topk", "dtype", "sink",
                                                              "block_size")}}
        self._lock = threading.Lock()  # one forward pass at a time, whatever the caller's loop
        self._pending: list[tuple[Request, asyncio.Future, threading.Event]] = []
        self._draining = False
        self._cancels: set[threading.Event] = set()  # every request queued or running

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self.load)

    def load(self) -> None:
        import torch

        from dsparity.model.loading import load_causal_lm

        if threads := self.spec.opt("threads"):
            torch.set_num_threads(int(threads))
        device = _pick_device(self.spec)
        dtype = str(self.spec.opt("dtype", "bfloat16" if device != "cpu" else "float32"))
        model, tokenizer, resolved = load_causal_lm(self.spec.name, dtype=dtype, device=device)
        if tokenizer.chat_template is None:
            raise DsparityError(f"model {self.spec.name}", "chat_template",
                                "the tokenizer has no chat template",
                                "use an instruct/chat model or add a chat_template to its tokenizer")
        if self.spec.opt("attention", "dense") != "dense":
            model = _with_mode(model, tokenizer, resolved.revision, self.spec)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = self.max_batch or (1 if device == "cpu" else 8)
        self.concurrency = self.max_batch
        self.identity.update(
            revision=resolved.revision,
            dtype=dtype,
            chat_template_sha256=hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:16],
            dsa=getattr(model, "dsa_revision", None),
        )
        if resolved.source.startswith(("hf:", "modelscope:")):  # the pinned hub snapshot
            self.identity["source"] = resolved.source
        self.identity["shape"] = model_shape(model)


    def context_length(self) -> int:
        from dsparity.evals.backends.local_scoring import max_length

        return max_length(self.model, self.tokenizer)

    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    def prompt_tokens(self, request: Request) -> int:
        return len(self.tokenizer.apply_chat_template(_messages(request), add_generation_prompt=True,
                                                      tokenize=True, return_dict=False))

    async def count_tokens(self, request: Request) -> int:
        return self.prompt_tokens(request)

    def cancel_all(self) -> None:
        """Stop everything queued or running (at the next token): the server is shutting down."""
        for event in list(self._cancels):
            event.set()

    async def generate(self, request: Request, cancel: threading.Event | None = None) -> Completion:
        """Queue a chat request; `cancel` set while it waits drops it, while it runs stops it at
        the next token (the answer so far comes back with finish reason "cancelled")."""
        cancel = cancel or threading.Event()
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future, cancel))
        self._cancels.add(cancel)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        try:
            return await future
        finally:
            self._cancels.discard(cancel)

    async def run_exclusive(self, fn, cancel: threading.Event | None = None):
        """Run `fn(cancel)` on the model in a worker thread, alone (no batch shares the model)."""
        cancel = cancel or threading.Event()
        self._cancels.add(cancel)

        def locked():
            with self._lock:
                return fn(cancel)

        try:
            return await asyncio.to_thread(locked)
        finally:
            self._cancels.discard(cancel)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    continue
                start = time.perf_counter()
                try:
                    completions = await asyncio.to_thread(self._run_locked, [r for r, _, _ in batch],
                                                          [c for _, _, c in batch])
                except Exception as exc:  # a crash inside the model fails these samples, not the run
                    completions = [Completion(error=f"{type(exc).__name__}: {exc}",
                                              error_class="local_error") for _ in batch]
                for (_, future, _), completion in zip(batch, completions, strict=True):
                    completion.latency_s = time.perf_counter() - start
                    if not future.done():
                        future.set_result(completion)
        finally:
            self._draining = False

    def _take_batch(self) -> list[tuple[Request, asyncio.Future, threading.Event]]:
        for item in [i for i in self._pending if i[2].is_set()]:  # cancelled while queued
            self._pending.remove(item)
            if not item[1].done():
                item[1].set_result(Completion(error="cancelled before it started",
                                              error_class="cancelled"))
        if not self._pending:
            return []
        first = self._pending.pop(0)
        batch = [first]
        if first[0].temperature == 0:
            for item in list(self._pending):
                if len(batch) >= self.max_batch:
                    break
                if item[0].temperature == 0 and item[0].stop == first[0].stop:
                    batch.append(item)
                    self._pending.remove(item)
        return batch

    def _run_locked(self, requests: list[Request], cancels: list[threading.Event]) -> list[Completion]:
        with self._lock:
            return generate_batch(self.model, self.tokenizer, requests, cancels=cancels)

    async def stream(self, request: Request,
                     cancel: threading.Event | None = None) -> AsyncIterator[str | Completion]:
        """Yield text pieces as they are generated, then the final Completion.

        A piece is held back while it could still be the start of a stop string, so a client
        never sees text that the final answer cuts away.
        """
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=600)
        cancel = cancel or threading.Event()
        self._cancels.add(cancel)
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, self._run_streaming, request, streamer, cancel)
        pieces, text, emitted = iter(streamer), "", 0
        hold = max((len(s) for s in request.stop), default=1) - 1
        try:
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                text += piece
                cut, stopped = cut_at_stop(text, request.stop)
                safe = cut if stopped else text[:max(emitted, len(text) - hold)]
                if len(safe) > emitted:
                    yield safe[emitted:]
                    emitted = len(safe)
            completion = await done
            if completion.text.startswith(text[:emitted]) and len(completion.text) > emitted:
                yield completion.text[emitted:]
            yield completion
        finally:  # the client went away (the generator was closed): stop generating
            cancel.set()
            self._cancels.discard(cancel)

    def _run_streaming(self, request: Request, streamer, cancel: threading.Event) -> Completion:
        start = time.perf_counter()
        try:
            with self._lock:
                completion = generate_batch(self.model, self.tokenizer, [request], streamer=streamer,
                                            cancels=[cancel])[0]
        except Exception as exc:
            streamer.end()  # release the consumer
            completion = Completion(error=f"{type(exc).__name__}: {exc}", error_class="local_error")
        completion.latency_s = time.perf_counter() - start
        return completion

    async def score(self, request: ScoreRequest) -> Completion:
        """Log-likelihoods of each span, exact, on the model's own attention path."""
        start = time.perf_counter()
        try:
            completion = await asyncio.to_thread(self._score_locked, request)
        except Exception as exc:  # a crash inside the model fails this sample, not the run
            completion = Completion(error=f"{type(exc).__name__}: {exc}", error_class="local_error")
        completion.latency_s = time.perf_counter() - start
        return completion

    def _score_locked(self, request: ScoreRequest) -> Completion:
        from dsparity.evals.backends.local_scoring import score_request

        with self._lock:
            spans = score_request(self.model, self.tokenizer, request)
        tokens = sum(s.n + s.first_position for s in spans)
        return Completion(finish_reason="scored", scores=[s.pack() for s in spans],
                          usage=Usage(prompt_tokens=tokens))

    async def close(self) -> None:
        self.model = None

    def selection_recall(self, prompts: list, *, max_tokens: int = 2048) -> dict | None:
        """Attention-mass recall of this model's attention mode on prompts (text or chat messages),
        mean over layers and prompts; None for a dense model or when no prompt is longer than k."""
        from dsparity.model.modes import selection_recall

        if self.model is None:
            self.load()
        runtime = getattr(self.model, "dsa_runtime", None)
        if runtime is None or not runtime.enabled:
            return None
        results = []
        with self._lock:
            for prompt in prompts:
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                          tokenize=False)
                ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
                if ids.shape[-1] > runtime.topk:
                    results.append(selection_recall(self.model, ids[:, :max_tokens]))
        if not results:
            return None
        per_layer = [sum(r["per_layer"][i] for r in results) / len(results)
                     for i in range(len(results[0]["per_layer"]))]
        return {"recall": sum(per_layer) / len(per_layer), "per_layer": per_layer,
                "prompts": len(results), "tokens": [r["tokens"] for r in results]}


def _with_mode(model, tokenizer, base_revision: str, spec: ModelSpec):
    """`attention=dsa` (the warmed-up lightning indexer) or a sparsity control at the same top-k
    (`window`, `block`, `oracle`: dsparity.model.modes), on one DSA-converted model."""
    from dsparity.model import DSAConfig, convert_to_dsa, prepare_dsa
    from dsparity.model.modes import DEFAULT_BLOCK_SIZE, DEFAULT_SINK, apply_mode

    mode = str(spec.opt("attention"))
    if getattr(model.config, "model_type", "") == "deepseek_v32":
        # A DSA checkpoint (DeepSeek's, or one `dsparity convert` wrote): its own trained indexers
        # through dsparity's latent-layout kernels; topk defaults to the checkpoint's index_topk.
        from dsparity.model import use_dsparity_attention

        topk = int(spec.opt("topk", model.config.index_topk))
        model = use_dsparity_attention(model)
        return apply_mode(model, mode, topk=topk, sink=int(spec.opt("sink", DEFAULT_SINK)),
                          block_size=int(spec.opt("block_size", DEFAULT_BLOCK_SIZE)))
    topk = int(spec.opt("topk", 256))
    if mode == "dsa" and spec.opt("indexers"):
        model = _load_trained_indexers(model, str(spec.opt("indexers")), base_revision, spec, topk)
    elif mode == "dsa":
        model = prepare_dsa(model, tokenizer, base_revision=base_revision, topk=topk)
    else:  # the controls never read the indexer: no warm-up
        convert_to_dsa(model, DSAConfig(index_topk=topk))
    return apply_mode(model, mode, topk=topk, sink=int(spec.opt("sink", DEFAULT_SINK)),
                      block_size=int(spec.opt("block_size", DEFAULT_BLOCK_SIZE)))


def _load_trained_indexers(model, path: str, base_revision: str, spec: ModelSpec, topk: int):
    """`indexers=PATH`: weights from a longer warm-up (`dsparity warmup --out`), checked against
    this model's revision and indexer shape; recorded in provenance like the cached ones."""
    from dsparity.model import DSAConfig, convert_to_dsa
    from dsparity.model.checkpoint import load_indexers, read_metadata
    from dsparity.model.prepare import stamp_indexers

    try:  # the file's own indexer shape (a warm-up may have chosen it), at this spec's top-k
        saved = DSAConfig.from_dict(read_metadata(path)["dsa_config"])
        convert_to_dsa(model, replace(saved, index_topk=topk))
        load_indexers(model, path, expect_revision=base_revision)
    except Exception as exc:  # missing, not safetensors, another model's: one line, named
        raise DsparityError(f"model spec {spec.text}", "indexers", str(exc).splitlines()[0],
                            "give the indexers.safetensors that `dsparity warmup --out` wrote for "
                            "this model") from None
    return stamp_indexers(model, Path(path))


def _pick_device(spec: ModelSpec) -> str:
    import torch

    device = str(spec.opt("device", "cpu"))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DsparityError(f"model spec {spec.text}", "device=cuda", "torch sees no CUDA device",
                            "use device=cpu or device=auto")
    return device


def _messages(request: Request) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in request.messages]


def cancel_criteria(cancels: list[threading.Event]):
    """A stopping criterion that ends generation once every request of the batch is cancelled."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = all(c.is_set() for c in cancels)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return Cancelled()


def generate_batch(model, tokenizer, requests: list[Request], *, streamer=None,
                   cancels: list[threading.Event] | None = None) -> list[Completion]:
    """Run chat requests through a transformers model together; cut at stop strings ourselves."""
    import torch

    first = requests[0]
    prompts = [tokenizer.apply_chat_template(_messages(req), add_generation_prompt=True, tokenize=False)
               for req in requests]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sampling = first.temperature > 0
    if sampling and first.seed is not None:
        torch.manual_seed(first.seed)
    max_new = max(r.max_tokens for r in requests)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new, do_sample=sampling,
                                  pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    if sampling:
        kwargs.update(temperature=first.temperature, top_p=first.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if first.stop:
        kwargs.update(stop_strings=list(first.stop), tokenizer=tokenizer)
    if cancels:
        kwargs.update(stopping_criteria=[cancel_criteria(cancels)])
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    eos = set(_as_list(model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id))
    prompt_len = enc["input_ids"].shape[1]
    done = [_completion(tokenizer, out[i, prompt_len:].tolist(), req, int(enc["attention_mask"][i].sum()),
                        eos) for i, req in enumerate(requests)]
    for completion, cancel in zip(done, cancels or [], strict=False):
        if cancel.is_set():
            completion.finish_reason = "cancelled"
    return done


def _completion(tokenizer, new_tokens: list[int], request: Request, prompt_tokens: int,
                eos: set[int]) -> Completion:
    # Trailing pads (a shorter sequence of the batch) and tokens past this request's own limit go.
    while new_tokens and new_tokens[-1] == tokenizer.pad_token_id and tokenizer.pad_token_id not in eos:
        new_tokens.pop()
    new_tokens = new_tokens[:request.max_tokens]
    ended = next((i for i, t in enumerate(new_tokens) if t in eos), None)
    if ended is not None:
        new_tokens = new_tokens[:ended + 1]
    text, stopped = cut_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), request.stop)
    finish = "stop" if stopped or ended is not None or len(new_tokens) < request.max_tokens else "length"
    return Completion(text=text, finish_reason=finish,
                      usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(new_tokens)))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut at the earliest stop string; report whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def model_shape(model) -> dict[str, int] | None:
    """The sizes that decide FLOPs per token (the report's cost-by-position curve)."""
    c = model.config
    try:
        heads = int(c.num_attention_heads)
        shape = {"layers": int(c.num_hidden_layers), "hidden": int(c.hidden_size), "heads": heads,
                 "kv_heads": int(getattr(c, "num_key_value_heads", None) or heads),
                 "head_dim": int(getattr(c, "head_dim", None) or c.hidden_size // heads),
                 "intermediate": int(c.intermediate_size), "vocab": int(c.vocab_size)}
    except (AttributeError, TypeError):
        return None
    runtime = getattr(model, "dsa_runtime", None)
    if runtime is not None:
        shape.update(index_heads=runtime.config.index_n_heads, index_dim=runtime.config.index_head_dim)
    return shape
