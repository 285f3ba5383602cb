"""The catalogues as one record type, and the catalogue API (titles, ancestors, validation, code lists).

Records:
- `Entry`: one catalogue term for one code (a title, a synonym from the alphabetical index, an inclusion).
- `CodeInfo`: one code with its place in the hierarchy (chapter, block, 3-character category, parent) and
  whether it is terminal, i.e. codable.

The parsers for the individual file formats live in `oncocoder.index.parsers`; `load_catalogue()` reads the
files that ship with the package (or any given ones) into a `Catalogue`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from oncocoder.errors import UserError

DATA_DIR = Path(__file__).resolve().parent / "data"
CATALOGUE_DIR = DATA_DIR / "catalogues"

# The files that ship (gzip-compressed copies of the BfArM/WHO files; see data/ATTRIBUTION.md).
DEFAULT_FILES = {
    "icd10gm_codes": CATALOGUE_DIR / "icd10gm2025syst_kodes.txt.gz",
    "alphaidse": CATALOGUE_DIR / "icd10gm2025_alphaidse_edvtxt_20240927.txt.gz",
    "alpha2010": CATALOGUE_DIR / "icd10gm2010alpha_edv_ascii_20091030.txt.gz",
    "icdo3": CATALOGUE_DIR / "icdo32019.xml.gz",
}

# Which alphabetical index feeds the ICD-10-GM synonyms: Alpha-ID-SE 2025 (the paper's source), or the 2010
# alphabetical index as a fallback (its codes mapped onto 2025, see parsers.parse_alpha2010).
ALPHABET_SOURCES = ("alphaidse", "alpha2010")

KINDS = ("title", "synonym", "inclusion")


@dataclass(frozen=True, slots=True)
class Entry:
    """One catalogue term for one code."""

    code: str
    system: str  # icd10gm | icdo_topography | icdo_morphology | ops
    text: str
    kind: str  # title | synonym | inclusion
    chapter: str = ""
    block: str = ""
    category: str = ""  # 3-character category (ICD-10-GM, ICD-O-3 topography, OPS 4-character group)
    behaviour: str | None = None  # ICD-O-3 morphology behaviour digit (0 benign ... 3 malignant, 6 metastasis)
    source: str = ""  # which file the term came from


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """One code and its place in the hierarchy."""

    code: str
    system: str
    title: str
    terminal: bool
    parent: str | None = None
    chapter: str = ""
    block: str = ""
    category: str = ""
    behaviour: str | None = None


@dataclass
class Catalogue:
    """All codes and terms of the loaded systems, with lookups by code."""

    codes: dict[str, dict[str, CodeInfo]] = field(default_factory=dict)  # system -> code -> info
    entries: list[Entry] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)  # name -> {path, sha256, version, counts}

    # ------------------------------------------------------------------ construction
    def add_codes(self, infos: list[CodeInfo]) -> None:
        for info in infos:
            self.codes.setdefault(info.system, {})[info.code] = info

    def add_entries(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    # ------------------------------------------------------------------ API
    @property
    def systems(self) -> list[str]:
        return list(self.codes)

    def info(self, code: str, system: str) -> CodeInfo | None:
        return self.codes.get(system, {}).get(normalize_code(code, system))

    def title(self, code: str, system: str) -> str:
        info = self.info(code, system)
        if info is None:
            raise KeyError(f"{code} is not a {system} code")
        return info.title

    def is_valid(self, code: str | None, system: str, terminal_only: bool = True) -> bool:
        """True when `code` exists in `system` (and is codable, i.e. terminal, unless terminal_only=False)."""
        if not code:
            return False
        info = self.info(code, system)
        return info is not None and (info.terminal or not terminal_only)

    def ancestors(self, code: str, system: str) -> list[CodeInfo]:
        """Parents from the nearest up to the 3-character category (the code itself not included)."""
        out, info = [], self.info(code, system)
        if info is None:
            raise KeyError(f"{code} is not a {system} code")
        while info.parent and (info := self.codes[system].get(info.parent)) is not None:
            out.append(info)
        return out

    def children(self, code: str, system: str) -> list[CodeInfo]:
        return [i for i in self.codes.get(system, {}).values() if i.parent == normalize_code(code, system)]

    def terminal_descendants(self, code: str, system: str) -> list[CodeInfo]:
        """The codable codes at or below `code` (the code itself when it is terminal)."""
        return self.descendants(system).get(normalize_code(code, system), [])

    def list_codes(self, system: str, terminal_only: bool = True) -> list[str]:
        if system not in self.codes:
            raise UserError(f"Unknown system {system!r}; choose one of {', '.join(self.systems)}.")
        return [c for c, i in self.codes[system].items() if i.terminal or not terminal_only]

    def entries_of(self, system: str) -> list[Entry]:
        return [e for e in self.entries if e.system == system]

    def descendants(self, system: str) -> dict[str, list[CodeInfo]]:
        """code (as the catalogue writes it) -> its codable codes (itself when terminal); computed once."""
        cache = self.__dict__.setdefault("_desc_cache", {})
        if system not in cache:
            desc: dict[str, list[CodeInfo]] = {}
            for info in self.codes.get(system, {}).values():
                if not info.terminal:
                    continue
                desc.setdefault(info.code, []).append(info)
                for anc in self.ancestors(info.code, system):
                    desc.setdefault(anc.code, []).append(info)
            cache[system] = desc
        return cache[system]


_ICD_RE = re.compile(r"^([A-Z])(\d\d)\.?([0-9A-Z]{0,2})[+*!†]?$")
_MORPH_RE = re.compile(r"^(\d{4})[/:](\d)$")
_OPS_RE = re.compile(r"^(\d)-?(\d{2}[0-9a-z]?)(?:\.?([0-9a-z]{1,2}))?$")  # 5-870.a2, 8-52d.0


def normalize_code(code: str, system: str) -> str:
    """Write a code as the catalogue does: `c509` -> `C50.9`, `8140:3` -> `8140/3`, `5870a2` -> `5-870.a2`."""
    c = code.strip().replace(" ", "")
    if system in ("icd10gm", "icdo_topography"):
        m = _ICD_RE.match(c.upper().replace("-", ""))
        if not m:
            return c.upper()
        letter, digits, rest = m.groups()
        return f"{letter}{digits}" + (f".{rest}" if rest else "")
    if system == "icdo_morphology":
        m = _MORPH_RE.match(c)
        return f"{m.group(1)}/{m.group(2)}" if m else c
    if system == "ops":
        m = _OPS_RE.match(c.lower())
        if not m:
            return c
        chapter, group, rest = m.groups()
        return f"{chapter}-{group}" + (f".{rest}" if rest else "")
    return c


@lru_cache(maxsize=4)
def _load_cached(alphabet: str, files: tuple[tuple[str, str], ...]) -> Catalogue:
    from oncocoder.index import parsers

    paths = {k: Path(v) for k, v in files}
    cat = Catalogue()
    icd_codes, icd_titles, meta = parsers.parse_icd10gm_codes(paths["icd10gm_codes"])
    cat.add_codes(icd_codes)
    cat.add_entries(icd_titles)
    cat.sources["icd10gm_codes"] = meta
    if alphabet == "alphaidse":
        entries, meta = parsers.parse_alphaidse(paths["alphaidse"], cat)
    elif alphabet == "alpha2010":
        entries, meta = parsers.parse_alpha2010(paths["alpha2010"], cat)
    else:
        raise UserError(f"Unknown alphabetical index {alphabet!r}; choose one of {', '.join(ALPHABET_SOURCES)}.")
    cat.add_entries(entries)
    cat.sources[alphabet] = meta
    icdo_codes, icdo_entries, meta = parsers.parse_icdo3_claml(paths["icdo3"])
    cat.add_codes(icdo_codes)
    cat.add_entries(icdo_entries)
    cat.sources["icdo3"] = meta
    if "ops_claml" in paths or "ops_codes" in paths:
        from oncocoder.index import ops

        if "ops_claml" in paths:
            codes, entries, meta = ops.parse_ops_claml(paths["ops_claml"])
            cat.sources["ops_claml"] = meta
        else:
            codes, entries, meta = ops.parse_ops_codes(paths["ops_codes"])
            cat.sources["ops_codes"] = meta
        cat.add_codes(codes)
        cat.add_entries(entries)
    return cat


def load_catalogue(alphabet: str = "alphaidse", files: dict[str, str | Path] | None = None) -> Catalogue:
    """The catalogue from the shipped files, or from `files` (keys as in DEFAULT_FILES, plus optional
    `ops_claml` or `ops_codes`). Results are cached per argument set; treat the returned object as read-only."""
    merged = {k: str(v) for k, v in DEFAULT_FILES.items()}
    merged.update({k: str(v) for k, v in (files or {}).items()})
    return _load_cached(alphabet, tuple(sorted(merged.items())))
