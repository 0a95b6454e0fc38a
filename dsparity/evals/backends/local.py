"""The `local` backend: a transformers model in this process (dense or DSA)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

from dsparity.errors import DsparityError
from dsparity.evals.backends.base import Completion, Request, Usage
from dsparity.evals.specs import ModelSpec


class LocalBackend:
    """Greedy-by-default generation with the model's chat template; one request at a time.

    torch already uses every core for one sequence on CPU, so requests are serialised through a
    lock rather than run in parallel threads that would fight over the same cores.
    """

    concurrency = 1

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = None
        self.tokenizer = None
        self.identity: dict[str, Any] = {"kind": "local", "model": spec.name,
                                         "options": {k: v for k, v in spec.options.items()
                                                     if k in ("attention", "topk", "dtype")}}
        self._lock = threading.Lock()

    async def start(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self.load)

    def load(self) -> None:
        import torch

        from dsparity.model.loading import load_causal_lm

        if threads := self.spec.opt("threads"):
            torch.set_num_threads(int(threads))
        device = str(self.spec.opt("device", "cpu"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise DsparityError(f"model spec {self.spec.text}", "device=cuda",
                                "torch sees no CUDA device", "use device=cpu or device=auto")
        default_dtype = "bfloat16" if device == "cuda" else "float32"
        dtype = str(self.spec.opt("dtype", default_dtype))
        model, tokenizer, resolved = load_causal_lm(self.spec.name, dtype=dtype, device=device)
        if tokenizer.chat_template is None:
            raise DsparityError(f"model {self.spec.name}", "chat_template",
                                "the tokenizer has no chat template",
                                "use an instruct/chat model or add a chat_template to its tokenizer")
        if self.spec.opt("attention", "dense") == "dsa":
            from dsparity.model import prepare_dsa

            model = prepare_dsa(model, tokenizer, base_revision=resolved.revision,
                                topk=int(self.spec.opt("topk", 256)))
        self.model, self.tokenizer = model, tokenizer
        self.identity.update(
            revision=resolved.revision,
            dtype=dtype,
            chat_template_sha256=hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()[:16],
            dsa=getattr(model, "dsa_revision", None),
        )

    async def generate(self, request: Request) -> Completion:
        start = time.perf_counter()
        try:
            completion = await asyncio.to_thread(self._generate_locked, request)
        except Exception as exc:  # a crash inside the model is an error of this sample, not of the run
            return Completion(error=f"{type(exc).__name__}: {exc}", error_class="local_error",
                              latency_s=time.perf_counter() - start)
        completion.latency_s = time.perf_counter() - start
        return completion

    def _generate_locked(self, request: Request) -> Completion:
        with self._lock:
            return generate_text(self.model, self.tokenizer, request)

    async def close(self) -> None:
        self.model = None


def generate_text(model, tokenizer, request: Request) -> Completion:
    """Run one chat request through a transformers model; cut at stop strings ourselves."""
    import torch

    messages = [{"role": r, "content": c} for r, c in request.messages]
    input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
    input_ids = input_ids.to(model.device)
    sampling = request.temperature > 0
    if sampling and request.seed is not None:
        torch.manual_seed(request.seed)
    kwargs: dict[str, Any] = dict(max_new_tokens=request.max_tokens, do_sample=sampling,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if sampling:
        kwargs.update(temperature=request.temperature, top_p=request.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if request.stop:
        kwargs.update(stop_strings=list(request.stop), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    new_tokens = out[0, input_ids.shape[1]:].tolist()
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    text, stopped = cut_at_stop(text, request.stop)
    eos = set(_as_list(model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id))
    hit_eos = bool(new_tokens) and new_tokens[-1] in eos
    finish = "stop" if stopped or hit_eos or len(new_tokens) < request.max_tokens else "length"
    usage = Usage(prompt_tokens=input_ids.shape[1], completion_tokens=len(new_tokens))
    return Completion(text=text, finish_reason=finish, usage=usage)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut at the earliest stop string; report whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
