"""ICD-10-GM -> ICD-O-3 topography, by the documented conventions in `data/icd10_topography.tsv`.

Used by the retrieval (topography candidates that follow from the ICD-10-GM candidates) and by the training data
(topography answers for ICD-10-GM catalogue terms). Only unambiguous rules are listed; everything else maps to None.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue

CROSSWALK_FILE = Path(__file__).resolve().parent / "data" / "icd10_topography.tsv"
RULES = ("same", "skin", "fixed", "none")


@lru_cache(maxsize=2)
def _rules(path: str) -> list[tuple[str, str, str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [(r["icd10"], r["rule"], r["topography"] or "", r["note"])
                    for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    except (FileNotFoundError, KeyError) as exc:
        raise UserError(f"The crosswalk {path} is missing or lacks the columns icd10, rule, topography, note.") from exc
    bad = [r for r in rows if r[1] not in RULES]
    if bad:
        raise UserError(f"The crosswalk {path} has an unknown rule {bad[0][1]!r}; use one of {', '.join(RULES)}.")
    return rows


def _in_range(category: str, spec: str) -> bool:
    lo, _, hi = spec.partition("-")
    return lo <= category <= (hi or lo)


def topography_for(icd10: str, cat: Catalogue, path: Path = CROSSWALK_FILE) -> str | None:
    """The ICD-O-3 topography code that an ICD-10-GM code implies, or None where no rule is unambiguous."""
    category = icd10[:3]
    for spec, rule, fixed, _ in _rules(str(path)):
        if not _in_range(category, spec):
            continue
        if rule == "none":
            return None
        if rule == "fixed":
            return fixed if cat.is_valid(fixed, "icdo_topography") else None
        site = "C44" + icd10[3:5] if rule == "skin" else icd10[:5]
        for candidate in (site, site[:3] + ".9"):
            if cat.is_valid(candidate, "icdo_topography"):
                return candidate
        return None
    return None
