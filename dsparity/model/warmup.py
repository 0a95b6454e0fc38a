"""Training the lightning indexers of a converted model: dense warm-up, then the sparse stage.

Recipe (DeepSeek-V3.2-Exp tech report §2.1-2.2, dsa.md §5), one target definition throughout:
p_t = the head-averaged dense attention of query t over all its causal keys, computed in the layer
from the layer's own q and k (`attention.row_probs`).

- Start: each layer's indexer is one KV group of the model's own heads where the shapes allow
  (`indexer_init.py`): that start carries the far reads minutes of CPU training do not learn.
- Stage 1, dense warm-up: the backbone frozen and attending densely; each indexer trained alone on
  KL(p_t || softmax(I_t)) over all causal keys (TR eq. 3).
- Stage 2, sparse: the model runs sparse with the indexers selecting (so every layer sees the
  hidden states it sees at inference); targets captured there, indexer inputs detached (they are
  captured tensors). Loss: the stage-1 KL on these states plus the report's selected-set KL
  (eq. 4: p restricted to the selected set S_t and renormalised, against softmax(I) over S_t).

What makes retrieval learnable (the issue with attention-mass recall as the only target): the
training text plants facts far back and asks for them (`training_text.py`), and the rows that
predict an answer's tokens are captured every time and drawn for `answer_share` of each step's
rows. Sequences are as long as what is evaluated, so targets are never held as L x L per layer:
only the captured rows are, [layers, R, L] in fp16, with the layer inputs [layers, L, hidden].

Evaluation on held-out sequences built from held-out files: KL and attention-mass recall over
captured rows (oracle top-k and window + sink as references), and needle recall: at answer rows,
does the layer's top-k contain the context position of the token being copied?
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch

from dsparity import kernels
from dsparity.model.convert import dsa_layers
from dsparity.model.diagnostics import evidence_rows
from dsparity.model.indexer_init import attention_init_blocker, init_from_attention
from dsparity.model.metrics import (
    SelectionMetrics,
    kl_rows,
    layer_metrics,
    mean_metrics,
    selected_set_kl,
)
from dsparity.model.stacked import trainable_scorer


@dataclass(frozen=True)
class WarmupConfig:
    # First use on 2 cores: one 1K-token forward costs 5-15 s there, so the default recipe is
    # sized to about 5 minutes (README); `dsparity warmup --lengths 1024,2048,4096 ...` is longer.
    lengths: tuple[int, ...] = (1024,)  # training sequence lengths, cycled
    train_sequences: int = 12
    heldout_sequences: int = 4
    rows_per_sequence: int = 160  # captured query rows per sequence: every answer row + random rows
    min_row: int = 16  # random rows start here (before it, any k selects everything)
    # Stage 1 steps: 160 keeps first use under 10 minutes on 2 cores with the all-groups indexer;
    # at k = 64 needle recall was 0.865 / 0.912 / 0.938 after 80 / 160 / 240 (README).
    steps: int = 160
    rows_per_step: int = 128
    answer_share: float = 0.5  # of each step's rows, drawn from answer rows where a sequence has them
    lr: float = 1e-3  # TR §2.1 warm-up LR
    sparse_sequences: int = 6  # stage 2: sequences captured while the model runs sparse
    sparse_steps: int = 40  # 120 steps added 0.003 mass recall and no needle recall (README)
    sparse_lr: float = 5e-4
    eval_every: int = 80
    # Torch threads for training/evaluation (small ops): 1 thread runs them as fast as 2 on an idle
    # 2-core box and several times faster when another process holds a core (stack.md).
    train_threads: int = 1
    seed: int = 0
    # "attention": each layer's indexer starts as one KV group of the model's own heads where the
    # shapes allow (`indexer_init.py`; needle recall 0.54 -> 0.84 at k = 32); "random": nn.Linear.
    init: str = "attention"

    def __post_init__(self) -> None:
        if self.init not in ("attention", "random"):
            raise ValueError(f"WarmupConfig.init must be 'attention' or 'random', got {self.init!r}")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Capture:
    """One sequence's training material: per layer the attention input and the target rows."""

    x: torch.Tensor  # [layers, L, hidden] float16
    rows: torch.Tensor  # [R] long, ascending
    p: torch.Tensor  # [layers, R, L] float16: head-averaged dense attention of each row
    answer: torch.Tensor  # [R] bool: the row predicts an answer token
    evidence: torch.Tensor  # [R] long: context position of the token the row copies, -1 if none


@dataclass
class WarmupReport:
    dsa_config: dict
    warmup_config: dict
    topk: int
    start: SelectionMetrics
    final: SelectionMetrics
    per_layer: list[SelectionMetrics]
    history: list[dict] = field(default_factory=list)  # {step, stage, loss, [heldout metrics]}
    timings: dict = field(default_factory=dict)  # seconds: text, capture, init, train, eval, total
    # How the indexers started: {"method": "attention", "groups": [...], "metrics": {...}} or
    # {"method": "random", "reason": why the model's heads could not be used}.
    init: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WarmupReport:
        return cls(d["dsa_config"], d["warmup_config"], d["topk"], SelectionMetrics(**d["start"]),
                   SelectionMetrics(**d["final"]), [SelectionMetrics(**m) for m in d["per_layer"]],
                   d.get("history", []), d.get("timings", {}), d.get("init", {}))


def _pick_rows(length: int, answer_rows: list[int], n: int, min_row: int, rng: random.Random) -> list[int]:
    pool = [r for r in range(min(min_row, length - 1), length) if r not in set(answer_rows)]
    extra = rng.sample(pool, min(len(pool), max(0, n - len(answer_rows))))
    return sorted(set(answer_rows) | set(extra))


@torch.no_grad()
def capture(model, sequences, cfg: WarmupConfig, *, sparse: bool, progress=None,
            label: str = "targets") -> list[Capture]:
    """One forward per sequence; each layer hands its input and its rows' dense attention over."""
    runtime = model.dsa_runtime
    n_layers = len(list(dsa_layers(model)))
    device = next(model.parameters()).device
    rng = random.Random(f"{cfg.seed}:rows")
    out = []
    task = progress.add_task(label, total=len(sequences), info="") if progress else None
    for seq in sequences:
        length = len(seq.ids)
        rows = _pick_rows(length, seq.answer_rows, cfg.rows_per_sequence, cfg.min_row, rng)
        xs = torch.empty(n_layers, length, model.config.hidden_size, dtype=torch.float16)
        ps = torch.empty(n_layers, len(rows), length, dtype=torch.float16)

        def keep(layer_idx: int, x: torch.Tensor, p: torch.Tensor, xs=xs, ps=ps) -> None:
            xs[layer_idx] = x[0].to(torch.float16).cpu()
            ps[layer_idx] = p[0].to(torch.float16).cpu()

        runtime.capture, runtime.capture_rows, runtime.capture_sparse = keep, torch.tensor(rows), sparse
        enabled = runtime.enabled
        runtime.enabled = sparse
        try:
            model(torch.tensor([seq.ids], device=device), use_cache=False, logits_to_keep=1)
        finally:
            runtime.capture, runtime.capture_rows, runtime.capture_sparse = None, None, False
            runtime.enabled = enabled
        answer = torch.tensor([r in set(seq.answer_rows) for r in rows])
        evidence = torch.full((len(rows),), -1, dtype=torch.long)
        if seq.answer_rows:
            start = seq.answer_rows[0] + 1
            found = evidence_rows(seq.ids[:start], _copied(seq.ids[start:]))
            if found:
                for row, ev in zip(*found, strict=True):
                    if row in rows:
                        evidence[rows.index(row)] = ev
        out.append(Capture(xs, torch.tensor(rows), ps, answer, evidence))
        if progress:
            progress.advance(task)
    return out


def _copied(answer: list[int]) -> list[int]:
    """The answer tokens that also occur as such in the context (the end-of-turn token does not)."""
    return answer[:-1] if len(answer) > 1 else answer


def row_scores(indexer, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Indexer scores of query positions `rows` [R] against all L keys of x [L, hidden] -> [R, L].

    Keys after a row's position are -inf (causal); positions are absolute, as at inference.
    """
    length = x.shape[0]
    pos = torch.arange(length, device=x.device)
    keys = indexer.keys(x.unsqueeze(0), pos.unsqueeze(0))  # [1, L, d_I]
    q, w = indexer.queries(x[rows].unsqueeze(0), rows.unsqueeze(0))  # [1, R, H_I, d_I], [1, R, H_I]
    scores = kernels.indexer_scores(q, keys, w, causal=False)[0]  # [R, L]
    return scores.masked_fill(pos.unsqueeze(0) > rows.unsqueeze(1), float("-inf"))


def _sample(c: Capture, n: int, share: float, gen: torch.Generator) -> torch.Tensor:
    """Indices into c.rows: `share` of them answer rows (with replacement) when there are any."""
    answers = torch.nonzero(c.answer).flatten()
    others = torch.nonzero(~c.answer).flatten()
    n_ans = int(round(n * share)) if len(answers) else 0
    pick = [answers[torch.randint(len(answers), (n_ans,), generator=gen)]] if n_ans else []
    if len(others):
        pick.append(others[torch.randint(len(others), (n - n_ans,), generator=gen)])
    return torch.cat(pick)


def train_stage(model, captures: list[Capture], heldout: list[Capture], cfg: WarmupConfig, k: int,
                *, stage: str, steps: int, lr: float, progress=None, history=None,
                step0: int = 0, total: int = 0) -> None:
    """`steps` Adam steps on every layer's indexer at once (`stacked.trainable_scorer`); each
    layer's indexer has its own loss, the mean over layers is what is minimised."""
    indexers = [layer.indexer for layer in dsa_layers(model)]
    dev = indexers[0].wk.weight.device  # captures live on the CPU, indexers anywhere
    stacked = trainable_scorer(indexers).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + (0 if stage == "dense" else 1))
    opt = torch.optim.Adam(stacked.parameters(), lr=lr)
    task = progress.add_task(f"indexers: {stage} stage", total=steps, info="") if progress else None
    for i in range(steps):
        c = captures[int(torch.randint(len(captures), (1,), generator=gen))]
        pick = _sample(c, cfg.rows_per_step, cfg.answer_share, gen)
        rows = c.rows[pick].to(dev)
        p = c.p[:, pick].to(dev, torch.float32).flatten(0, 1)  # [N * R, L]
        scores = stacked.scores(c.x.to(dev, torch.float32), rows).flatten(0, 1)
        loss = kl_rows(p, scores)
        if stage == "sparse":
            loss = loss + selected_set_kl(scores, p, k)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step = step0 + i + 1
        entry = {"step": step, "stage": stage, "loss": loss.item()}
        if step % cfg.eval_every == 0 and step < total:
            stacked.write_back(indexers)
            m, _ = evaluate(model, heldout, k, stride=4)
            entry.update(_metrics_entry(m))
        history.append(entry)
        if progress:
            info = f"loss {entry['loss']:.3f}" + (f"  needle recall {entry['needle']:.3f}"
                                                  if entry.get("needle") is not None else "")
            progress.update(task, advance=1, info=info)
    stacked.write_back(indexers)


def _metrics_entry(m: SelectionMetrics) -> dict:
    return {"kl": m.kl, "recall": m.recall, "oracle": m.oracle, "window_sink": m.window_sink,
            "needle": m.needle, "needle_oracle": m.needle_oracle, "needle_window": m.needle_window}


@torch.no_grad()
def evaluate(model, captures: list[Capture], k: int,
             stride: int = 1) -> tuple[SelectionMetrics, list[SelectionMetrics]]:
    """Held-out metrics per layer and their mean: rows past k for KL and mass recall, answer rows
    with known evidence for needle recall."""
    indexers = [layer.indexer for layer in dsa_layers(model)]
    dev = indexers[0].wk.weight.device
    stacked = trainable_scorer(indexers).to(dev)
    items: list[list[SelectionMetrics]] = [[] for _ in indexers]
    for c in captures:
        thin = torch.arange(len(c.rows)) % stride == 0  # intermediate evaluations: fewer rows
        keep = (c.evidence >= 0) | ((c.rows >= k) & thin)
        if not keep.any():
            continue
        rows = c.rows[keep].to(dev)
        scores = stacked.scores(c.x.to(dev, torch.float32), rows)  # [N, R, L]
        p = c.p[:, keep].to(dev, torch.float32)
        evidence = c.evidence[keep].to(dev)
        for n in range(len(indexers)):
            items[n].append(layer_metrics(p[n], scores[n], rows, k, evidence=evidence))
    per_layer = [mean_metrics(m) for m in items]
    return mean_metrics(per_layer), per_layer


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class InfoColumn(ProgressColumn):
        """A task's `info` field, empty for tasks that set none (a missing field must not crash
        the first-use warm-up)."""

        def render(self, task) -> Text:
            return Text(str(task.fields.get("info", "")))

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), InfoColumn(),
                    TimeElapsedColumn(), transient=False, console=Console(stderr=True))


def warm_up(model, tokenizer, cfg: WarmupConfig | None = None, *, progress: bool = True,
            corpus_root=None) -> WarmupReport:
    """Full first-use warm-up of a converted model's indexers; returns metrics and history."""
    from dsparity.model.training_text import training_sequences

    cfg = cfg or WarmupConfig()
    runtime = model.dsa_runtime
    k = runtime.topk
    t0 = time.perf_counter()
    lengths = list(cfg.lengths)
    train_seqs = training_sequences(tokenizer, "train", cfg.train_sequences + cfg.sparse_sequences,
                                    lengths, seed=cfg.seed, root=corpus_root)
    held_seqs = training_sequences(tokenizer, "heldout", cfg.heldout_sequences, lengths,
                                   seed=cfg.seed, retrieval_share=1.0, root=corpus_root)
    timings = {"text": time.perf_counter() - t0}
    was_training = model.training
    model.eval()
    for layer in dsa_layers(model):  # backbone frozen: only indexer parameters get gradients
        layer.indexer.float().train().requires_grad_(True)
    history: list[dict] = []
    total = cfg.steps + cfg.sparse_steps
    with _progress(progress) as bar:
        t = time.perf_counter()
        dense = capture(model, train_seqs[:cfg.train_sequences], cfg, sparse=False, progress=bar,
                        label="dense targets")
        heldout = capture(model, held_seqs, cfg, sparse=False, progress=bar, label="held-out targets")
        timings["capture"] = time.perf_counter() - t
        with _threads(cfg.train_threads):
            t = time.perf_counter()
            start, _ = evaluate(model, heldout, k)
            timings["eval"] = time.perf_counter() - t
            history.append({"step": 0, "stage": "start", "loss": None, **_metrics_entry(start)})
            t = time.perf_counter()
            init = _initialise(model, dense, heldout, cfg, k)
            timings["init"] = time.perf_counter() - t
            if "metrics" in init:
                history.append({"step": 0, "stage": "attention init", "loss": None, **init["metrics"]})
            t = time.perf_counter()
            with torch.enable_grad():
                train_stage(model, dense, heldout, cfg, k, stage="dense", steps=cfg.steps, lr=cfg.lr,
                            progress=bar, history=history, total=total)
            timings["train"] = time.perf_counter() - t
        if cfg.sparse_steps > 0 and cfg.sparse_sequences > 0:
            t = time.perf_counter()
            sparse = capture(model, train_seqs[cfg.train_sequences:], cfg, sparse=True, progress=bar,
                             label="sparse targets")
            timings["capture"] += time.perf_counter() - t
            with _threads(cfg.train_threads), torch.enable_grad():
                t = time.perf_counter()
                train_stage(model, sparse, heldout, cfg, k, stage="sparse", steps=cfg.sparse_steps,
                            lr=cfg.sparse_lr, progress=bar, history=history, step0=cfg.steps,
                            total=total)
                timings["train"] += time.perf_counter() - t
        with _threads(cfg.train_threads):
            t = time.perf_counter()
            final, per_layer = evaluate(model, heldout, k)
            timings["eval"] += time.perf_counter() - t
    history[-1].update(_metrics_entry(final))
    for layer in dsa_layers(model):
        layer.indexer.eval()
        layer.indexer.requires_grad_(False)
    model.train(was_training)
    timings["total"] = time.perf_counter() - t0
    return WarmupReport(runtime.config.to_dict(), asdict(cfg), k, start, final, per_layer,
                        history, timings, init)


def _initialise(model, dense: list[Capture], heldout: list[Capture], cfg: WarmupConfig,
                k: int) -> dict:
    """Start the indexers from the model's heads when the recipe asks and the shapes allow."""
    if cfg.init == "random":
        return {"method": "random", "reason": "WarmupConfig.init='random'"}
    blocker = attention_init_blocker(model)
    if blocker:
        return {"method": "random", "reason": blocker}
    groups = init_from_attention(model, dense, k).groups
    metrics, _ = evaluate(model, heldout, k)
    return {"method": "attention", "groups": groups, "metrics": _metrics_entry(metrics)}
