"""Training the lightning indexers of a converted model: dense warm-up, then the sparse stage.

Recipe (DeepSeek-V3.2-Exp tech report §2.1, dsa.md §5):
- Dense warm-up: the backbone is frozen and attends densely; each indexer is trained alone on
  L = sum_t KL(p_t || softmax(I_t)), p_t the head-averaged dense attention of its layer (eq. 3).
- Sparse stage: KL only over the selected set S_t = top-k(I_t) (eq. 4), indexer inputs detached.
  Our target is the dense p restricted to S_t and renormalised (dsa.md §8.2.5 option (b)): with a
  frozen backbone it comes straight from the cached targets. The report also trains the backbone
  with the LM loss at a low LR in this stage; that is not done here (see README / report).

What makes it affordable on two CPU cores (stack.md, "DSA indexer warm-up" calibration): the dense
targets are computed once per sequence by one forward pass whose attention hands each layer's
input x and head-averaged probabilities p to a capture callback (p is reduced over heads inside
the layer, so the [H, L, L] maps of all layers never coexist); each step then trains every layer's
indexer on `rows_per_step` sampled query rows against all keys. The number of steps, not rows per
step, limits progress there.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch

from dsparity import kernels
from dsparity.model.convert import dsa_layers
from dsparity.model.metrics import SelectionMetrics, kl_rows, layer_metrics, mean_metrics


@dataclass(frozen=True)
class WarmupConfig:
    seq_len: int = 2048  # L of the acceptance check (k = 256 at L = 2048)
    train_sequences: int = 6
    heldout_sequences: int = 2
    steps: int = 200  # dense warm-up steps (calibration: 100 -> 0.932, 200 -> 0.941, 400 -> 0.946)
    rows_per_step: int = 128
    lr: float = 1e-3  # TR §2.1 warm-up LR
    sparse_steps: int = 0  # sparse-stage steps after the dense warm-up
    sparse_lr: float = 1e-4
    eval_every: int = 50
    eval_row_stride: int = 8  # intermediate evaluations use every 8th row; the final one all rows
    # Torch threads for training/evaluation (small ops): 1 thread runs them as fast as 2 on an idle
    # 2-core box and several times faster when another process holds a core (stack.md).
    train_threads: int = 1
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class CapturedTargets:
    """Per sequence and layer: attention input x and head-averaged dense probabilities p."""

    x: torch.Tensor  # [N, layers, L, hidden] float32
    p: torch.Tensor  # [N, layers, L, L] float16 (row t is 0 beyond t)


@dataclass
class WarmupReport:
    dsa_config: dict
    warmup_config: dict
    topk: int
    start: SelectionMetrics
    final: SelectionMetrics
    per_layer: list[SelectionMetrics]
    history: list[dict] = field(default_factory=list)  # {step, stage, loss, [heldout metrics]}
    timings: dict = field(default_factory=dict)  # seconds: text, capture, train, eval, total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WarmupReport:
        return cls(d["dsa_config"], d["warmup_config"], d["topk"], SelectionMetrics(**d["start"]),
                   SelectionMetrics(**d["final"]), [SelectionMetrics(**m) for m in d["per_layer"]],
                   d.get("history", []), d.get("timings", {}))


@torch.no_grad()
def capture_targets(model, ids: torch.Tensor, progress=None) -> CapturedTargets:
    """One dense forward per sequence; the DSA runtime's capture hook stores x and p per layer."""
    runtime = model.dsa_runtime
    n, length = ids.shape
    n_layers = len(list(dsa_layers(model)))
    xs = torch.empty(n, n_layers, length, model.config.hidden_size)
    ps = torch.empty(n, n_layers, length, length, dtype=torch.float16)
    task = progress.add_task("dense targets", total=n) if progress else None
    device = next(model.parameters()).device
    for i in range(n):
        def capture(layer_idx: int, x: torch.Tensor, p: torch.Tensor, i: int = i) -> None:
            xs[i, layer_idx] = x[0].float().cpu()
            ps[i, layer_idx] = p[0].to(torch.float16).cpu()

        runtime.capture = capture
        try:
            model(ids[i : i + 1].to(device), use_cache=False, logits_to_keep=1)
        finally:
            runtime.capture = None
        if progress:
            progress.advance(task)
    return CapturedTargets(xs, ps)


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


def dense_loss(indexer, x: torch.Tensor, p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p_t || softmax(I_t)) over causal keys (TR eq. 3)."""
    return kl_rows(p[rows].float(), row_scores(indexer, x, rows)).mean()


def sparse_loss(indexer, x: torch.Tensor, p: torch.Tensor, rows: torch.Tensor,
                k: int) -> torch.Tensor:
    """Mean over rows of KL over the selected set only (TR eq. 4), target renormalised on S_t."""
    scores = row_scores(indexer, x, rows)
    idx = kernels.select_topk(scores.detach().unsqueeze(0), k)[0].long()  # [R, k]
    valid = idx >= 0
    safe = idx.clamp_min(0)
    target = p[rows].float().gather(-1, safe) * valid
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    sel = scores.gather(-1, safe).masked_fill(~valid, float("-inf"))
    return kl_rows(target, sel).mean()


@torch.no_grad()
def evaluate(model, targets: CapturedTargets, k: int,
             row_stride: int = 1) -> tuple[SelectionMetrics, list[SelectionMetrics]]:
    """Held-out metrics, mean over layers and query positions t >= k; plus the per-layer table."""
    length = targets.p.shape[-1]
    rows = torch.arange(k, length, row_stride)
    per_layer = []
    for layer in dsa_layers(model):
        items = []
        dev = layer.indexer.wk.weight.device
        for n in range(targets.x.shape[0]):
            x, p = targets.x[n, layer.layer_idx].to(dev), targets.p[n, layer.layer_idx]
            rows_d = rows.to(dev)
            items.append(layer_metrics(p[rows].to(dev).float(), row_scores(layer.indexer, x, rows_d),
                                       rows_d, k))
        per_layer.append(mean_metrics(items))
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


def train_indexers(model, train: CapturedTargets, heldout: CapturedTargets, cfg: WarmupConfig,
                   k: int, progress=None) -> list[dict]:
    """Dense warm-up then sparse stage on cached targets; returns the history."""
    layers = list(dsa_layers(model))
    gen = torch.Generator().manual_seed(cfg.seed)
    length = train.p.shape[-1]
    low = min(k, length - 1)  # rows where selection matters (t >= k)
    history: list[dict] = []
    stages = [("dense", cfg.steps, cfg.lr), ("sparse", cfg.sparse_steps, cfg.sparse_lr)]
    total = cfg.steps + cfg.sparse_steps
    task = progress.add_task("indexer training", total=total, info="") if progress else None
    step = 0
    for stage, steps, lr in stages:
        if steps <= 0:
            continue
        params = [q for layer in layers for q in layer.indexer.parameters()]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            n = int(torch.randint(train.x.shape[0], (1,), generator=gen))
            rows_cpu = torch.randint(low, length, (cfg.rows_per_step,), generator=gen)
            losses = []
            for layer in layers:
                dev = layer.indexer.wk.weight.device  # targets live on the CPU, indexers anywhere
                x, p = train.x[n, layer.layer_idx].to(dev), train.p[n, layer.layer_idx].to(dev)
                rows = rows_cpu.to(dev)
                if stage == "dense":
                    losses.append(dense_loss(layer.indexer, x, p, rows))
                else:
                    losses.append(sparse_loss(layer.indexer, x, p, rows, k))
            loss = torch.stack(losses).mean()  # every layer's indexer has its own loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            entry = {"step": step, "stage": stage, "loss": loss.item()}
            if step % cfg.eval_every == 0 and step < total:
                m, _ = evaluate(model, heldout, k, cfg.eval_row_stride)
                entry.update(kl=m.kl, recall=m.recall, oracle=m.oracle, window_sink=m.window_sink)
            history.append(entry)
            if progress:
                info = f"loss {entry['loss']:.3f}"
                if "recall" in entry:
                    info += f"  held-out recall {entry['recall']:.3f}"
                progress.update(task, advance=1, info=info)
    return history


def warm_up(model, tokenizer, cfg: WarmupConfig | None = None, *, progress: bool = True,
            corpus_root=None) -> WarmupReport:
    """Full first-use warm-up of a converted model's indexers; returns metrics and history."""
    from dsparity.model.corpus import token_sequences

    cfg = cfg or WarmupConfig()
    runtime = model.dsa_runtime
    k = runtime.topk
    t0 = time.perf_counter()
    train_ids = token_sequences(tokenizer, "train", cfg.train_sequences, cfg.seq_len,
                                seed=cfg.seed, root=corpus_root)
    held_ids = token_sequences(tokenizer, "heldout", cfg.heldout_sequences, cfg.seq_len,
                               seed=cfg.seed, root=corpus_root)
    timings = {"text": time.perf_counter() - t0}
    was_training = model.training
    model.eval()
    for layer in dsa_layers(model):  # backbone frozen: only indexer parameters get gradients
        layer.indexer.float().train().requires_grad_(True)
    with _progress(progress) as bar:
        t = time.perf_counter()
        train = capture_targets(model, train_ids, bar)
        heldout = capture_targets(model, held_ids, bar)
        timings["capture"] = time.perf_counter() - t
        with _threads(cfg.train_threads):
            t = time.perf_counter()
            start, _ = evaluate(model, heldout, k)
            timings["eval"] = time.perf_counter() - t
            t = time.perf_counter()
            with torch.enable_grad():
                history = train_indexers(model, train, heldout, cfg, k, bar)
            timings["train"] = time.perf_counter() - t
            t = time.perf_counter()
            final, per_layer = evaluate(model, heldout, k)
            timings["eval"] += time.perf_counter() - t
    history.insert(0, {"step": 0, "stage": "start", "loss": None, "kl": start.kl,
                       "recall": start.recall, "oracle": start.oracle,
                       "window_sink": start.window_sink})
    history[-1].update(kl=final.kl, recall=final.recall, oracle=final.oracle,
                       window_sink=final.window_sink)
    for layer in dsa_layers(model):
        layer.indexer.eval()
        layer.indexer.requires_grad_(False)
    model.train(was_training)
    timings["total"] = time.perf_counter() - t0
    return WarmupReport(runtime.config.to_dict(), asdict(cfg), k, start, final, per_layer,
                        history, timings)
