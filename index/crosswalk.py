"""ICD-10-GM -> ICD-O-3 topography, by the documented conventions in `data/icd10_topography.tsv`.

Used by the retrieval (the topography that the ICD-10-GM candidates imply) and by the training data (topography
answers for ICD-10-GM catalogue terms, the topography of held-out test rows). A code gets a topography only where a
rule makes it unambiguous.

Rules (the longest matching ICD-10-GM prefix decides):
- `same`: the same site code (C61 -> C61.9 for a 3-character code, C44.50 -> C44.5 for a 5-character one);
- `digit`: the given category with the code's subcode (melanoma of the skin C43.5 -> C44.5);
- `fixed`: one topography (leukaemias -> C42.1 bone marrow, lymphomas without a site -> C77.9 ...);
- `none`: no topography (secondary neoplasms C77-C79: the topography is that of the primary).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue

CROSSWALK_FILE = Path(__file__).resolve().parent / "data" / "icd10_topography.tsv"
RULES = ("same", "digit", "fixed", "none")


@dataclass(frozen=True)
class Convention:
    icd10_pattern: str  # an ICD-10-GM code prefix
    rule: str  # same | digit | fixed | none
    topography: str  # target code (fixed) or category (digit); empty otherwise
    note: str = ""


def load_conventions(path: Path = CROSSWALK_FILE) -> tuple[Convention, ...]:
    return _load(str(path))


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[Convention, ...]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError as exc:
        raise UserError(f"The crosswalk file {path} is missing; reinstall the package.") from exc
    out = []
    for n, r in enumerate(rows, 2):
        try:
            conv = Convention(r["icd10_pattern"].strip(), r["rule"].strip(), (r["topography"] or "").strip(),
                              (r.get("note") or "").strip())
        except (KeyError, AttributeError) as exc:
            raise UserError(f"{path} needs the tab-separated columns icd10_pattern, rule, topography, note.") from exc
        if conv.rule not in RULES or not conv.icd10_pattern:
            raise UserError(f"Line {n} of {path}: the rule must be one of {', '.join(RULES)} and the pattern must "
                            "not be empty.")
        if conv.rule in ("digit", "fixed") and not conv.topography:
            raise UserError(f"Line {n} of {path}: the rule {conv.rule} needs a topography.")
        out.append(conv)
    return tuple(sorted(out, key=lambda c: -len(c.icd10_pattern)))


def topography_for(code: str, cat: Catalogue, conventions: tuple[Convention, ...] | None = None) -> str | None:
    """The ICD-O-3 topography an ICD-10-GM code implies, or None where no rule makes it unambiguous."""
    conventions = load_conventions() if conventions is None else conventions
    conv = next((c for c in conventions if code.startswith(c.icd10_pattern)), None)
    if conv is None or conv.rule == "none":
        return None
    if conv.rule == "fixed":
        topo = conv.topography
    elif conv.rule == "same":
        topo = f"{code}.9" if len(code) == 3 else code[:5]
    else:  # digit
        if len(code) < 5:
            return None
        topo = f"{conv.topography}.{code[4]}"
    return topo if cat.is_valid(topo, "icdo_topography") else None
