"""Parsers for the BfArM catalogue files into `Entry` and `CodeInfo` records.

- ICD-10-GM systematic codes table ("Metadaten TXT", `;`-separated, 28 fields): every code with its title.
- Alpha-ID-SE (`|`-separated, 8 fields): the alphabetical index with stable Alpha-IDs, 2025 codes.
- ICD-10-GM alphabetical index 2010 (EDV text, ISO-8859-1, `;`-separated): mapped onto the 2025 codes.
- ICD-O-3 German ClaML (topography and morphology; morphology written `8140:3` in the file, `8140/3` here).

Each parser returns its records plus a metadata dict (path, sha256, counts) that goes into index manifests.
Files may be plain or gzip-compressed. A missing or malformed file raises a UserError naming the file.
"""

from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue, CodeInfo, Entry, normalize_code
from oncocoder.files import sha256_file

# Share of malformed lines above which a file is refused as corrupt (a few odd lines are tolerated and counted).
MAX_BAD_LINE_SHARE = 0.01


def read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise UserError(f"The catalogue file {path} is missing; reinstall the package or pass an existing file.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"The catalogue file {path} is a damaged gzip file; replace it.") from exc
    return raw


def read_text(path: Path, encodings=("utf-8", "iso-8859-1")) -> tuple[str, str]:
    """The decoded text of a catalogue file and its sha256 (of the bytes as stored)."""
    raw = read_bytes(path)
    digest = sha256_file(path)
    for enc in encodings:
        try:
            return raw.decode(enc).lstrip("\ufeff"), digest
        except UnicodeDecodeError:
            continue
    raise UserError(f"The catalogue file {path} is neither UTF-8 nor ISO-8859-1 text.")


def _check_bad_lines(path: Path, bad: int, total: int, what: str) -> None:
    if total == 0 or bad > MAX_BAD_LINE_SHARE * total:
        raise UserError(f"The catalogue file {path} does not look like {what} ({bad} of {total} lines malformed); "
                        "check that the right file was given.")


# ------------------------------------------------------------------------------------------ ICD-10-GM codes

def parse_icd10gm_codes(path: Path) -> tuple[list[CodeInfo], list[Entry], dict]:
    """ICD-10-GM systematic codes table: one CodeInfo per 3-, 4- and 5-character code and its title as Entry."""
    text, digest = read_text(path)
    rows, bad = [], 0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in lines:
        f = line.split(";")
        if len(f) != 28 or f[1] not in ("T", "N") or not f[6]:
            bad += 1
            continue
        rows.append(f)
    _check_bad_lines(path, bad, len(lines), "an ICD-10-GM codes table (28 ';'-separated fields)")

    # A block is named by its first 3-character category; its end is the last category inside it.
    block_end: dict[str, str] = {}
    for f in rows:
        if f[0] == "3":
            block_end[f[4]] = f[6]
    codes, entries = [], []
    for f in rows:
        code = normalize_code(f[6], "icd10gm")
        level = int(f[0])
        category = code[:3]
        parent = None if level == 3 else (category if level == 4 else code[:-1])
        block = f"{f[4]}-{block_end.get(f[4], f[4])}"
        info = CodeInfo(code=code, system="icd10gm", title=f[8].strip(), terminal=f[1] == "T", parent=parent,
                        chapter=f[3], block=block, category=category)
        codes.append(info)
        entries.append(Entry(code, "icd10gm", info.title, "title", info.chapter, block, category,
                             source="icd10gm2025"))
    meta = {"path": str(path), "sha256": digest, "codes": len(codes),
            "terminal": sum(c.terminal for c in codes), "malformed_lines": bad}
    return codes, entries, meta


def _icd_entry(cat: Catalogue, code: str, text: str, source: str) -> Entry:
    info = cat.codes["icd10gm"][code]
    return Entry(code, "icd10gm", text, "synonym", info.chapter, info.block, info.category, source=source)


def _strip_marker(code: str) -> str:
    return code.strip().rstrip("+*!†")


# ------------------------------------------------------------------------------------------ Alpha-ID-SE

def parse_alphaidse(path: Path, cat: Catalogue) -> tuple[list[Entry], dict]:
    """Alpha-ID-SE: one synonym Entry per valid line for its primary code (or, without one, its additional
    code), and one more for a second primary code. Star codes are not coded on their own and get no entry."""
    text, digest = read_text(path)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    entries, bad, invalid_flag, unknown = [], 0, 0, 0
    for line in lines:
        f = line.split("|")
        if len(f) != 8 or f[0] not in ("0", "1") or not f[1].startswith("I"):
            bad += 1
            continue
        if f[0] != "1":
            invalid_flag += 1
            continue
        term = f[7].strip()
        primaries = [c for c in (f[2], f[5]) if c.strip()]
        targets = primaries or ([f[4]] if f[4].strip() else [])
        for raw in targets:
            code = normalize_code(_strip_marker(raw), "icd10gm")
            if cat.is_valid(code, "icd10gm"):
                entries.append(_icd_entry(cat, code, term, "alphaidse2025"))
            else:
                unknown += 1
    _check_bad_lines(path, bad, len(lines), "an Alpha-ID-SE file (8 '|'-separated fields)")
    meta = {"path": str(path), "sha256": digest, "lines": len(lines), "entries": len(entries),
            "not_for_coding": invalid_flag, "unknown_codes": unknown, "malformed_lines": bad}
    return entries, meta


# ------------------------------------------------------------------------------------------ 2010 index

# Title words of the residual subcode that takes what an older, undivided code covered.
RESIDUAL_MARKS = ("nicht näher bezeichnet", "ohne angabe", "o.n.a.")


def map_to_2025(code: str, cat: Catalogue) -> tuple[str | None, str]:
    """Map an ICD-10-GM 2010 code onto 2025: ('kept'|'mapped'|'dropped').

    Kept: the code is a terminal 2025 code. Mapped: the code still exists in 2025 but was subdivided and exactly
    one of its terminal subcodes is the residual one ('nicht näher bezeichnet', 'ohne Angabe ...'), which is
    where an old term without the new distinction belongs. Dropped: everything else (retired or restructured codes)."""
    code = normalize_code(code, "icd10gm")
    if cat.is_valid(code, "icd10gm"):
        return code, "kept"
    if cat.info(code, "icd10gm") is None:
        return None, "dropped"
    unspecified = [d.code for d in cat.terminal_descendants(code, "icd10gm")
                   if any(mark in d.title.lower() for mark in RESIDUAL_MARKS)]
    if len(unspecified) == 1:
        return unspecified[0], "mapped"
    return None, "dropped"


def parse_alpha2010(path: Path, cat: Catalogue) -> tuple[list[Entry], dict]:
    """The 2010 alphabetical index (EDV text): usable entries whose code maps onto ICD-10-GM 2025."""
    text, digest = read_text(path, encodings=("iso-8859-1",))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    entries, bad = [], 0
    counts = {"kept": 0, "mapped": 0, "dropped": 0, "no_code": 0}
    for line in lines:
        f = line.split(";")
        if len(f) < 7 or f[0] not in "012345" or f[2] not in ("0", "1"):
            bad += 1
            continue
        # field 4: primary code; field 6: a second code (kind 3) or an additional '!' code (kinds 4, 5)
        primaries = [c for c in (f[3], f[5]) if c.strip() and not c.strip().endswith("!")]
        targets = primaries or ([f[5]] if f[5].strip() else [])
        if not targets:
            counts["no_code"] += 1
            continue
        # Field 3 is not a validity flag: it is 0 for good terms too ("Klassische Cholera", A00.0), so it is ignored.
        for raw in targets:
            code, how = map_to_2025(_strip_marker(raw), cat)
            counts[how] += 1
            if code:
                entries.append(_icd_entry(cat, code, f[6].strip(), "alpha2010"))
    _check_bad_lines(path, bad, len(lines), "an ICD-10-GM 2010 alphabetical index (';'-separated EDV text)")
    meta = {"path": str(path), "sha256": digest, "lines": len(lines), "entries": len(entries), **counts,
            "malformed_lines": bad}
    return entries, meta


# ------------------------------------------------------------------------------------------ ClaML

@dataclass
class ClamlClass:
    code: str
    kind: str  # chapter | block | category
    superclass: str | None
    rubrics: list[tuple[str, str]] = field(default_factory=list)  # (rubric kind, label text)
    usage: str | None = None


_EMPTY_REFERENCE = re.compile(r"\s*\(\s*(?:siehe|s\.)?\s*\)")


def _label_texts(label: ET.Element) -> list[str]:
    """The terms of one ClaML label: each list fragment is a term of its own; references are left out."""
    fragments = [f for f in label.iter("Fragment") if (f.text or "").strip()]
    if fragments:
        return [" ".join(f.text.split()) for f in fragments]
    parts = [label.text or ""]
    for child in label:
        if child.tag != "Reference":
            parts.append("".join(child.itertext()))
        parts.append(child.tail or "")
    text = " ".join("".join(parts).split())
    text = _EMPTY_REFERENCE.sub("", text).strip()  # "Myelosarkom (siehe <Reference/>)" -> "Myelosarkom"
    return [text] if text else []


def read_claml(path: Path, what: str) -> tuple[ET.Element, list[ClamlClass], str]:
    """The classes of a ClaML file (any classification) with their rubric texts."""
    raw = read_bytes(path)
    digest = sha256_file(path)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise UserError(f"The catalogue file {path} is not valid XML ({exc}); replace it with the BfArM ClaML file.") \
            from exc
    if root.tag != "ClaML":
        raise UserError(f"The catalogue file {path} is not a ClaML file; expected {what}.")
    classes = []
    for el in root.iter("Class"):
        sup = el.find("SuperClass")
        c = ClamlClass(code=el.get("code", ""), kind=el.get("kind", ""),
                       superclass=sup.get("code") if sup is not None else None, usage=el.get("usage"))
        for rubric in el.findall("Rubric"):
            for label in rubric.findall("Label"):
                for t in _label_texts(label):
                    c.rubrics.append((rubric.get("kind", ""), t))
        classes.append(c)
    return root, classes, digest


def parse_icdo3_claml(path: Path) -> tuple[list[CodeInfo], list[Entry], dict]:
    """ICD-O-3 German ClaML: topography (C00.0-C80.9, terminal at 4 characters) and morphology (`8140/3`)."""
    root, classes, digest = read_claml(path, "the ICD-O-3 ClaML")
    title = root.find("Title")
    by_code = {c.code: c for c in classes}

    def chapter_of(c: ClamlClass) -> str:
        while c.superclass and c.superclass in by_code:
            c = by_code[c.superclass]
        return c.code

    def block_of(c: ClamlClass) -> str:
        while c.superclass and by_code.get(c.superclass) and by_code[c.superclass].kind != "block":
            c = by_code[c.superclass]
        return c.superclass or ""

    codes, entries = [], []
    for c in classes:
        if c.kind != "category":
            continue
        chapter = chapter_of(c)
        if chapter == "T":
            system, code = "icdo_topography", normalize_code(c.code, "icdo_topography")
            terminal, behaviour, category = "." in code, None, code[:3]
            parent = category if terminal else None
        elif chapter == "M":
            system, code = "icdo_morphology", normalize_code(c.code, "icdo_morphology")
            terminal, behaviour, category, parent = True, code[-1], code[:4], None
        else:
            continue
        preferred = [t for k, t in c.rubrics if k == "preferred"]
        if not preferred:
            continue
        block = block_of(c)
        info = CodeInfo(code, system, preferred[0], terminal, parent, chapter, block, category, behaviour)
        codes.append(info)
        entries.append(Entry(code, system, preferred[0], "title", chapter, block, category, behaviour, "icdo3"))
        entries.extend(Entry(code, system, t, "inclusion", chapter, block, category, behaviour, "icdo3")
                       for k, t in c.rubrics if k == "inclusion")
    if not codes:
        raise UserError(f"The catalogue file {path} holds no ICD-O-3 topography or morphology classes.")
    meta = {"path": str(path), "sha256": digest, "version": title.get("version") if title is not None else None,
            "topography": sum(c.system == "icdo_topography" and c.terminal for c in codes),
            "morphology": sum(c.system == "icdo_morphology" for c in codes),
            "inclusions": sum(e.kind == "inclusion" for e in entries)}
    return codes, entries, meta
