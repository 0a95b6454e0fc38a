"""dsparity's backends as lm-eval models: `dsparity-local` and `dsparity-openai`.

    python -m dsparity.evals.harness.lm_eval_cli run --model dsparity-local \\
        --model_args model=smollm2-135m-instruct,attention=dsa,topk=256 --tasks ... --apply_chat_template
    python -m dsparity.evals.harness.lm_eval_cli run --model dsparity-openai \\
        --model_args model=deepseek-chat,base_url=https://api.deepseek.com,api_key_env=DEEPSEEK_API_KEY ...

lm-eval's plain `lm-eval` command cannot import a plugin model, hence the thin wrapper CLI that
imports this module (which registers both names) before handing over to lm-eval's own entry.

Devices: lm-eval hands every model its `--device` (default `cuda:0`, also on a machine without
CUDA). `dsparity-local` maps it: `cuda:N` runs on CUDA device N when torch sees it, else on the
CPU with a note on stderr; `cpu`, `cuda` and `auto` are dsparity's own; `mps` and others run on
the CPU with a note. A `device=` in `--model_args` wins over `--device`.
Generation goes through each backend's chat path; `loglikelihood` and `loglikelihood_rolling`
through its scoring path (exact in-process, `/v1/completions` with echo and logprobs remotely),
tokenized there as lm-eval's `hf` model tokenizes.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from urllib.parse import urlencode

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from dsparity.evals.backends import Request, make_backend
from dsparity.evals.backends.base import ScoreRequest, Span
from dsparity.evals.logprobs import SpanScores
from dsparity.evals.specs import LOCAL_KEYS, OPENAI_KEYS, ModelSpec, parse_spec

_LM_EVAL_ARGS = {"batch_size", "max_batch_size", "device", "trust_remote_code"}


def local_device(device: str) -> str:
    """lm-eval's device string -> dsparity's (cpu | cuda | auto), honouring only what exists."""
    value = str(device).strip().lower()
    if value in ("cpu", "auto"):
        return value
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match:
        import torch

        index = int(match.group(1) or 0)
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            torch.cuda.set_device(index)  # dsparity's `cuda` is the current CUDA device
            return "cuda"
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        print(f"dsparity-local: device {device!r} asked for, but torch sees "
              f"{have or 'no'} CUDA device{'s' if have != 1 else ''}; running on cpu", file=sys.stderr)
        return "cpu"
    print(f"dsparity-local: device {device!r} is not one dsparity runs on; running on cpu",
          file=sys.stderr)
    return "cpu"


def model_args_spec(kind: str, model: str, base_url: str | None = None, **options) -> ModelSpec:
    """`--model_args` (plus lm-eval's own settings) of dsparity-local / dsparity-openai -> the model
    spec they stand for; a key neither dsparity nor lm-eval knows is refused by name."""
    allowed = LOCAL_KEYS if kind == "local" else OPENAI_KEYS
    if kind == "local" and options.get("device") is not None:
        options["device"] = local_device(options["device"])
    opts = {k: v for k, v in options.items() if k in allowed}
    unknown = set(options) - set(allowed) - _LM_EVAL_ARGS
    if unknown:
        raise ValueError(f"dsparity-{kind}: unknown model_args {sorted(unknown)}; "
                         f"use model=, {'base_url=, ' if kind == 'openai' else ''}"
                         f"{', '.join(sorted(allowed))}")
    where = f"@{base_url}" if kind == "openai" else ""
    query = f"?{urlencode(opts)}" if opts else ""
    return parse_spec(f"{kind}:{model}{where}{query}", source="--model_args")


class _DsparityLM(LM):
    kind = ""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's constructor path, with `--model_args` winning over lm-eval's own settings
        (its default `device=cuda:0` would otherwise collide with a `device=` given there)."""
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string) if arg_string else {}
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    def __init__(self, model: str, base_url: str | None = None, **options):
        super().__init__()
        self.spec = model_args_spec(self.kind, model, base_url, **options)
        self.backend = make_backend(self.spec)
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.backend.start())

    @property
    def tokenizer_name(self) -> str:
        return self.spec.text

    def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
        return json.dumps(chat_history)  # the backend applies the real template (or the server does)

    def generate_until(self, requests) -> list[str]:
        async def all_of():
            return await asyncio.gather(*(self.backend.generate(_request(*r.args)) for r in requests))

        completions = self._loop.run_until_complete(all_of())
        failed = [c for c in completions if c.error]
        if failed:
            raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error}")
        return [c.text for c in completions]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        scored = self._score([ScoreRequest((Span(*r.args[:2]),)) for r in requests])
        return [(s.total, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests) -> list[float]:
        scored = self._score([ScoreRequest((Span("", r.args[0]),), rolling=True) for r in requests])
        return [s.total for s in scored]

    def _score(self, requests: list[ScoreRequest]) -> list[SpanScores]:
        async def all_of():
            return await asyncio.gather(*(self.backend.score(r) for r in requests))

        completions = self._loop.run_until_complete(all_of())
        failed = [c for c in completions if c.error]
        if failed:
            raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error}")
        return [SpanScores.unpack(c.scores[0]) for c in completions]


def _request(context: str, gen_kwargs: dict) -> Request:
    try:
        messages = json.loads(context)
        pairs = tuple((m["role"], m["content"]) for m in messages)
    except (json.JSONDecodeError, TypeError, KeyError):
        pairs = (("user", context),)
    until = gen_kwargs.get("until") or []
    sampling = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature", 0)) > 0
    return Request(messages=pairs, max_tokens=int(gen_kwargs.get("max_gen_toks", 256)),
                   temperature=float(gen_kwargs.get("temperature", 0)) if sampling else 0.0,
                   stop=tuple([until] if isinstance(until, str) else until))


@register_model("dsparity-local")
class DsparityLocalLM(_DsparityLM):
    kind = "local"


@register_model("dsparity-openai")
class DsparityOpenAILM(_DsparityLM):
    kind = "openai"
