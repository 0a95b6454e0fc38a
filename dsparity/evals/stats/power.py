"""The power check before a comparison: what each task can resolve at its size and margin.

Printed before anything is sent, so a user learns up front that 14 items can never show
equivalence at 5 points, instead of after ten minutes of inference (grading.md 5.4).

- 0/1-scored tasks: the best case is perfect agreement, whose Tango interval has half-width
  z^2 / (n + z^2) (`stats.binary_resolution`); a margin below that can never be met. The smallest
  one-way loss the task finds with 80% power is `stats.binary_mde`.
- Fidelity tasks: their resolution depends on how much documents vary, known only after the
  run; before it, at least two documents are needed for any interval at all.
- Other scores (judges, writing checks): known after the run (the report then shows the MDE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dsparity.evals import stats
from dsparity.evals.comparison.pairing import DEFAULT_ALPHA, DEFAULT_MARGIN
from dsparity.evals.stats.fidelity import DEFAULT_MARGIN as FIDELITY_MARGIN

BINARY_GRADERS = {"exact", "contains", "code", "stdio", "choice", "math", "loglikelihood"}


@dataclass
class TaskPower:
    task: str
    n: int
    margin: float
    unit: str
    resolution: float | None  # best-case equivalence half-width (None: known after the run)
    mde: float | None  # smallest one-way loss found with 80% power
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(tasks, *, margin: float | None, alpha: float = DEFAULT_ALPHA) -> list[TaskPower]:
    """One line per task; n counts items (repeats of an item are one cluster)."""
    out = []
    for t in tasks:
        n = len(t.items)
        if t.grader == "fidelity":
            m = float(t.settings.get("margin", FIDELITY_MARGIN))
            warn = None if n >= 2 else f"{n} document(s): at least 2 are needed for any interval"
            out.append(TaskPower(t.name, n, m, "nats/token", None, None, warn))
            continue
        m = margin if margin is not None else float(t.settings.get("margin", DEFAULT_MARGIN))
        if t.grader not in BINARY_GRADERS:
            out.append(TaskPower(t.name, n, m, "points", None, None, None))
            continue
        resolution, mde = stats.binary_resolution(n, alpha=alpha), stats.binary_mde(n, alpha=alpha)
        warn = None
        if resolution >= m:
            need = stats.items_for_equivalence(m, alpha=alpha)
            warn = (f"{n} items cannot show equivalence at +-{100 * m:g} points even if every answer "
                    f"agrees (needs >= {need}); only a loss of >= {100 * mde:.0f} points is found")
        out.append(TaskPower(t.name, n, m, "points", resolution, mde, warn))
    return out
