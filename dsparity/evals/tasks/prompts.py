"""Prompts as lm-eval builds them: its own few-shot machinery, for chat and scoring items alike.

lm-eval builds each document's context with `Task.fewshot_context` (description, `num_fewshot`
examples drawn by the task's sampler from its few-shot split, then the document), after seeding
the sampler with its default `fewshot_random_seed` (1234, `lm_eval.defaults.DEFAULT_OTHER_SEED`).
The sampler's generator advances once per document, in document order. dsparity runs a sample of
the documents (`--limit`), so it walks the documents in order up to the last one kept and lets
the sampler draw for the skipped ones too: every kept document gets the very shots `lm-eval run`
gives it in a full run, whichever documents `--limit` keeps.

Chat items: the context is rendered as lm-eval's `--apply_chat_template` renders it without
`--fewshot_as_multiturn`: the description as the system message, the shots and the question
collapsed into one user message (`lm_eval.api.utils.multiturn_to_singleturn`). Scoring items use
the plain-text context, as lm-eval does for log-likelihoods.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from dsparity.errors import DsparityError

FEWSHOT_SEED = 1234  # lm_eval.defaults.DEFAULT_OTHER_SEED, lm-eval's default --fewshot_random_seed


def num_fewshot(task) -> int:
    return int(task.config.num_fewshot or 0)


def walk(task, docs: Sequence[dict], keep: Sequence[int]) -> Iterator[tuple[int, dict]]:
    """(doc_id, doc) for the kept documents, with the few-shot sampler advanced exactly as a full
    `lm-eval run` advances it; the caller builds each kept document's context as it is yielded."""
    shots = num_fewshot(task)
    task.set_fewshot_seed(seed=FEWSHOT_SEED)
    wanted = set(keep)
    last = max(wanted, default=-1)
    for doc_id in range(last + 1):
        doc = docs[doc_id]
        if doc_id in wanted:
            yield doc_id, doc
        elif shots > 0:  # the draw fewshot_context would make for this document
            same_split = task.fewshot_cfg.split == task.config.test_split
            task.sampler.sample(n=shots, eval_doc=doc if same_split else None)


def _capture(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return json.dumps({"messages": messages, "add_generation_prompt": add_generation_prompt})


def chat_messages(spec, task, doc: dict) -> tuple[tuple[str, str], ...]:
    """The chat messages lm-eval would send for `doc` (few-shot examples included)."""
    rendered = task.fewshot_context(doc, num_fewshot=num_fewshot(task), apply_chat_template=True,
                                    chat_template=_capture, fewshot_as_multiturn=False,
                                    gen_prefix=task.doc_to_prefix(doc))
    if not isinstance(rendered, str):
        raise DsparityError(str(spec.yaml_path), "doc_to_text", "a task with one input per choice "
                            "(doc_to_text giving an index) cannot be a generation task",
                            "use output_type: multiple_choice")
    sent = json.loads(rendered)
    messages = sent["messages"]
    if messages and messages[-1]["role"] == "assistant":
        raise DsparityError(str(spec.yaml_path), "gen_prefix", "dsparity sends chat requests and "
                            "cannot pre-fill the start of the answer", "remove gen_prefix (or put "
                            "the words into doc_to_text)")
    return tuple((str(m["role"]), str(m["content"])) for m in messages)


def text_context(task, doc: dict) -> str | list[str]:
    """The plain-text context lm-eval scores log-likelihoods after (few-shot examples included)."""
    return task.fewshot_context(doc, num_fewshot=num_fewshot(task), gen_prefix=task.doc_to_prefix(doc))


def score_arguments(spec, task, doc_id: int, doc: dict) -> list[tuple]:
    """The arguments of lm-eval's own log-likelihood requests for one document (one per choice)."""
    instances = task.construct_requests(doc=doc, ctx=text_context(task, doc),
                                        metadata=(spec.name, doc_id, task.config.repeats),
                                        apply_chat_template=False, chat_template=None)
    if not isinstance(instances, list):
        instances = [instances]
    return [inst.arguments for inst in sorted(instances, key=lambda i: i.idx)]


def describe(task) -> dict[str, Any]:
    """How the task's few-shot examples are chosen (for `tasks show` and the task hash)."""
    shots = num_fewshot(task)
    if not shots:
        return {"num_fewshot": 0}
    cfg = task.fewshot_cfg
    sampler = cfg.sampler if isinstance(cfg.sampler, str) else getattr(cfg.sampler, "__name__", "custom")
    split = cfg.split or ("samples" if cfg.samples is not None else
                          task.config.training_split or task.config.validation_split or
                          task.config.test_split)
    return {"num_fewshot": shots, "split": split, "sampler": sampler, "seed": FEWSHOT_SEED}
