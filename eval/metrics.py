"""Per-row scoring: exact and partial matches, and retrieval recall@k.

Partial = the same 3-character category (ICD-10-GM, ICD-O-3 topography) or the same first four digits, i.e.
the histology without the behaviour digit (ICD-O-3 morphology).
"""

from __future__ import annotations

import math


def partial_key(code: str | None, system: str) -> str | None:
    if not code:
        return None
    return code[:4] if system == "icdo_morphology" else code[:3]


def exact(pred: str | None, gold: str | None) -> float:
    """1.0 / 0.0, or NaN where there is no gold code (not scored)."""
    if gold is None:
        return math.nan
    return float(pred == gold)


def partial(pred: str | None, gold: str | None, system: str) -> float:
    if gold is None:
        return math.nan
    return float(pred is not None and partial_key(pred, system) == partial_key(gold, system))


def recall_at_k(candidate_codes: list[str], gold: str | None, k: int, system: str, level: str = "exact") -> float:
    """1.0 when the gold code (or its partial key) is among the first k candidates; NaN without gold."""
    if gold is None:
        return math.nan
    top = candidate_codes[:k]
    if level == "exact":
        return float(gold in top)
    key = partial_key(gold, system)
    return float(any(partial_key(c, system) == key for c in top))
