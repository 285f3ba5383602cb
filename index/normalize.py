"""Query normalisation for retrieval, driven by the documented data file `data/abbreviations.tsv`.

- `expand(text)`: abbreviations common in German tumor documentation written out in the catalogue's words
  ("Mamma-Ca li." -> "Mamma-Karzinom"); laterality words are dropped (neither ICD-10-GM nor ICD-O-3 codes
  laterality). The result feeds the dense (embedding) search.
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
        # "Ca." written with a dot where the table has "Ca", and the reverse
        if not token.endswith("."):
            return self.exact.get(token + ".") or self.folded.get(token.lower() + ".")
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


def fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).lower().translate(_FOLD)


def lexical_form(text: str) -> str:
    """Lower-cased, folded, punctuation-free; hyphenated compounds also joined ("mamma-ca" -> "mammaca mamma ca")."""
    t = fold(text)
    joined = re.findall(r"\w+(?:-\w+)+", t)
    t = re.sub(r"[^\w]+", " ", t)
    extra = " ".join(j.replace("-", "") for j in joined)
    return " ".join((t + " " + extra).split())
