"""Query normalisation for retrieval, driven by the documented data file `data/abbreviations.tsv`.

- `expand(text)`: abbreviations common in German tumor documentation written out in the catalogue's words
  ("Mamma-Ca li." -> "Mamma-Karzinom"); laterality words are dropped (neither ICD-10-GM nor ICD-O-3 codes
  laterality). The result feeds the dense (embedding) search.
- `query_variants(text)`: extra queries that coding conventions call for (`data/query_variants.tsv`), e.g. a
  tumour "Zustand nach ..." is also looked up as "... in der Eigenanamnese".
- `lexical_form(text)`: lower case, umlauts folded, punctuation removed, hyphenated compounds both joined and
  split; used on both sides of the character n-gram search.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from oncocoder.errors import UserError

ABBREVIATIONS_FILE = Path(__file__).resolve().parent / "data" / "abbreviations.tsv"
VARIANTS_FILE = Path(__file__).resolve().parent / "data" / "query_variants.tsv"

# Token boundaries: whitespace, comma, semicolon, slash, brackets, hyphen (kept as separate parts).
_SPLIT = re.compile(r"(\s+|[,;/()\[\]]|-)")
# "Z. n." -> "Z.n.": dotted abbreviations written with inner spaces.
_DOTTED = re.compile(r"\b([A-Za-zÄÖÜäöü])\.\s+([A-Za-zÄÖÜäöü])\.")
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


@dataclass(frozen=True)
class Abbreviation:
    abbreviation: str
    expansion: str
    category: str
    note: str = ""


class Abbreviations:
    """Lookup of whole tokens: case-sensitive when the abbreviation has an upper-case letter."""

    def __init__(self, rows: list[Abbreviation]):
        self.rows = rows
        self.exact = {r.abbreviation: r for r in rows if any(c.isupper() for c in r.abbreviation)}
        self.folded = {r.abbreviation.lower(): r for r in rows if not any(c.isupper() for c in r.abbreviation)}

    def lookup(self, token: str) -> Abbreviation | None:
        for t in (token, token.rstrip(".:")):
            hit = self.exact.get(t) or self.folded.get(t.lower())
            if hit:
                return hit
        # "Ca." written with a dot where the table has "Ca", and the reverse; laterality only as written
        # ("Li" in "Li-Fraumeni-Syndrom" is not "li.")
        if not token.endswith("."):
            hit = self.exact.get(token + ".") or self.folded.get(token.lower() + ".")
            if hit and hit.category != "laterality":
                return hit
        return None


def load_abbreviations(path: Path = ABBREVIATIONS_FILE) -> Abbreviations:
    return _load_abbreviations(str(path))


@lru_cache(maxsize=4)
def _load_abbreviations(path: str) -> Abbreviations:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = [Abbreviation(r["abbreviation"].strip(), (r["expansion"] or "").strip(), r["category"].strip(),
                                 (r.get("note") or "").strip()) for r in reader]
    except FileNotFoundError as exc:
        raise UserError(f"The abbreviation table {path} is missing; reinstall the package.") from exc
    except (KeyError, AttributeError) as exc:
        raise UserError(f"The abbreviation table {path} needs the columns abbreviation, expansion, category, "
                        "note (tab-separated).") from exc
    return Abbreviations(rows)


def expand(text: str, table: Abbreviations | None = None) -> str:
    """Abbreviations written out, laterality dropped, whitespace collapsed."""
    table = table or load_abbreviations()
    text = _DOTTED.sub(r"\1.\2.", unicodedata.normalize("NFC", text))
    parts = _SPLIT.split(text)
    out = []
    for part in parts:
        if not part or _SPLIT.fullmatch(part):
            out.append(part)
            continue
        hit = table.lookup(part)
        if hit is None:
            out.append(part)
        elif hit.category == "laterality":
            out.append("")
        else:
            out.append(hit.expansion)
    joined = "".join(out)
    joined = re.sub(r"\s*-\s*(?=\s|$)|(?<=\s)-\s*|^-\s*", " ", joined)  # hyphens left dangling by a drop
    joined = re.sub(r"\s*,(\s*,)+", ",", joined)
    return " ".join(joined.split()).strip(" ,;")


@lru_cache(maxsize=4)
def _load_variants(path: str) -> list[tuple[re.Pattern, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [(re.compile(r["pattern"], re.IGNORECASE), r["variant"]) for r in rows]
    except FileNotFoundError as exc:
        raise UserError(f"The query variant table {path} is missing; reinstall the package.") from exc
    except (KeyError, re.error) as exc:
        raise UserError(f"The query variant table {path} is malformed ({exc}).") from exc


def query_variants(expanded: str, path: Path = VARIANTS_FILE) -> list[str]:
    """Extra queries that coding conventions call for (see data/query_variants.tsv)."""
    out = []
    for pattern, template in _load_variants(str(path)):
        m = pattern.search(expanded)
        if m:
            out.append(" ".join(m.expand(template).split()))
    return [v for v in out if v and v != expanded]


def fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).lower().translate(_FOLD)


def lexical_form(text: str) -> str:
    """Lower-cased, folded, punctuation-free; hyphenated compounds also joined ("mamma-ca" -> "mammaca mamma ca")."""
    t = fold(text)
    joined = re.findall(r"\w+(?:-\w+)+", t)
    t = re.sub(r"[^\w]+", " ", t)
    extra = " ".join(j.replace("-", "") for j in joined)
    return " ".join((t + " " + extra).split())
