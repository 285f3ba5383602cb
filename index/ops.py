"""Parsers for the German procedure classification OPS (Operationen- und Prozedurenschlüssel, BfArM).

Both BfArM machine-readable formats give the same records (system "ops", codes written `5-870.a2`):

- ClaML (`opsYYYYsyst_claml_YYYYMMDD.xml`, in the "ClaML" download): chapters (`5`), blocks (`5-87...5-88`, the
  form BfArM's own HTML pages are named after, e.g. `block-8-52...8-54.htm`) and categories: the 3-digit
  "Dreisteller" (`5-87`), the 4-digit code (`5-870`) and its 5th and 6th places (`5-870.a`, `5-870.a2`).
  Many 5th/6th places are not written out as classes but come from a subclassification: the class carries
  `<ModifiedBy code="ST5870">` (optionally restricted by `<ValidModifierClass code="1"/>`, or `all="false"`), and
  each `<ModifierClass modifier="ST5870" code="1">` appends its code (`5-870.a` + `1` = `5-870.a1`) and gives the
  title of the new code. Modifiers are applied as ClaML defines them: inherited by subclasses (unless an
  `ExcludeModifier` removes them), expanded at the classes that have no explicit subclasses, several modifiers one
  after another; an explicitly written class always wins over a generated code with the same name.
  Rubrics: `preferred` is the title; `preferredLong`, where it differs, a synonym; `inclusion` an inclusion entry;
  exclusions, notes, texts and coding hints are not terms for the code and are left out.
  Sources for this structure: public importers of the BfArM ClaML (ModifiedBy/ValidModifierClass/ModifierClass as
  quoted from `ops2015syst_claml_20141017.xml`, e.g. class `5-870.2` "Duktektomie" with `ModifiedBy ST5870`,
  `ValidModifierClass 0, 1`) and code lists with the generated codes (`5-870.a0` ... `5-870.a7`).
  Assumed, not seen in a real file: that the Dreisteller are `kind="category"` classes under their block (BfArM's
  HTML lists them as the "Kategorien" of a group); if a 4-place code's superclass is the block itself, the code
  simply gets no parent.

- Metadaten TXT codes table (`opsYYYYsyst_kodes.txt`, in the "Metadaten" download): one line per code of 4, 5 and
  6 places (the Dreisteller are in a separate file, `opsYYYYsyst_dreisteller.txt`, and are not read here),
  `;`-separated, UTF-8 (older files ISO-8859-1; both are read). Field layout used (1-based), as named in public
  importers of `ops2017syst_kodes.txt` and `ops2024syst_kodes.txt` (15 fields: Ebene, Ort, Art, KapNr, GrVon, DKode,
  Kode, Seite, Titel, Viersteller, Fünfsteller, Sechssteller, Para17bd, ZusatzK, EinmalK) and matching a real
  line quoted in two other public parsers:
  `4;T;N;1;1-10;1-10;1-100;N;Klinische Untersuchung in Allgemeinanästhesie;...`

   1 level: 4, 5 or 6 places (3 would be a Dreisteller)     9 title of the code itself
   2 T = terminal (codable), N = not terminal               10 title of its 4-place code
   3 kind of subdivision, one letter (not used here)        11 title of its 5-place code (empty above level 5)
   4 chapter number                                         12 title of its 6-place code (empty above level 6)
   5 first Dreisteller of the block (`5-87`)                13 use under § 17b/d KHG (not used)
   6 Dreisteller of the code (`5-87`; not used)             14 additional code J/N (not used)
   7 code with hyphen and dot (`5-870.a2`)                  15 one-time code J/N (not used)
   8 laterality required J/N (not used)

  Not confirmed from BfArM's record description itself (not available offline): that field 9 is the code's own
  short title (as in the ICD-10-GM table) and fields 10-12 the titles along its path; the parser only needs
  fields 1, 2, 4, 5, 7 and 9, and uses 10-12 for the full title where they are filled. Lines with fewer than
  12 fields are counted as malformed. The table has no block end; it is taken as the last Dreisteller that
  names the same block start, which is exact for the complete BfArM file.

Hierarchy in the records, the same from both formats: chapter `5`, block `5-87...5-88`, category the 4-place code
(`5-870`; a Dreisteller is its own category), parent the next code up: `5-870.a2` -> `5-870.a` -> `5-870` ->
`5-87` (the Dreisteller exists as a code only in the ClaML). Every code gets its title as a "title" Entry; codes of
5 and 6 places also get the full title the way OPS codes are usually shown, `5-870: 5-870.a: 5-870.a2` joined by
": " ("Partielle (brusterhaltende) Exzision der Mamma ...: Partielle Resektion: Defektdeckung ..."), as a synonym,
since titles such as "Sonstige" or "Mit bildgestützter Einstellung" mean nothing alone.
Files may be plain or gzip-compressed; a missing or malformed file raises a UserError naming the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from oncocoder.errors import UserError
from oncocoder.index.catalogue import CodeInfo, Entry, normalize_code
from oncocoder.index.parsers import ClamlClass, _check_bad_lines, _label_texts, read_claml, read_text

SYSTEM = "ops"
MIN_CODES_FIELDS = 12  # the real tables have 15; only the first 12 are read

_DREISTELLER_RE = re.compile(r"^\d-\d{2}$")
# 4 places (the 4th may be a letter: `8-52d`), then optionally a dot and one or two more places.
_CODE_RE = re.compile(r"^\d-\d{2}[0-9a-z](?:\.[0-9a-z]{1,2})?$")


def _level(code: str) -> int:
    """3 to 6 for an OPS code (`5-87`, `5-870`, `5-870.a`, `5-870.a2`); 0 for anything else."""
    if _DREISTELLER_RE.match(code):
        return 3
    if not _CODE_RE.match(code):
        return 0
    return 4 if "." not in code else 4 + len(code.split(".", 1)[1])


def _category(code: str) -> str:
    return code[:5] if _level(code) >= 4 else code


def _source(path: Path, version: str | None = None) -> str:
    """`ops2025` from the ClaML version or the file name (`ops2025syst_kodes.txt`); `ops` when neither says."""
    if version and re.fullmatch(r"\d{4}", version.strip()):
        return f"ops{version.strip()}"
    m = re.search(r"ops(\d{4})", Path(path).name.lower())
    return f"ops{m.group(1)}" if m else "ops"


def _full_title(code: str, titles: dict[str, str], parents: dict[str, str | None]) -> str:
    """The titles from the 4-place code down to `code`, joined by ': '."""
    parts, c = [], code
    while c and _level(c) >= 4 and c in titles:
        parts.append(titles[c])
        c = parents.get(c)
    return ": ".join(reversed(parts))


def _entries(info: CodeInfo, synonyms: list[str], inclusions: list[str], source: str) -> list[Entry]:
    """The title Entry of a code, then its synonyms and inclusions, each text once."""
    out = [Entry(info.code, SYSTEM, info.title, "title", info.chapter, info.block, info.category, source=source)]
    seen = {info.title}
    for kind, texts in (("synonym", synonyms), ("inclusion", inclusions)):
        for text in texts:
            if text and text not in seen:
                seen.add(text)
                out.append(Entry(info.code, SYSTEM, text, kind, info.chapter, info.block, info.category,
                                 source=source))
    return out


# ------------------------------------------------------------------------------------------ ClaML

@dataclass
class _ModifierClass:
    code: str  # what it appends: `1`, `.0`
    parent: str | None  # the ModifierClass above it within the same modifier, None at the top
    title: str
    inclusions: list[str]
    children: list[str] = field(default_factory=list)


def _rubrics(el: ET.Element) -> list[tuple[str, str]]:
    return [(r.get("kind", ""), t) for r in el.findall("Rubric") for lab in r.findall("Label")
            for t in _label_texts(lab)]


def _read_modifiers(root: ET.Element) -> dict[str, dict[str, _ModifierClass]]:
    """modifier code -> its classes in file order, with their sub-classes linked."""
    mods: dict[str, dict[str, _ModifierClass]] = {el.get("code", ""): {} for el in root.iter("Modifier")}
    for el in root.iter("ModifierClass"):
        modifier = el.get("modifier", "")
        sup = el.find("SuperClass")
        sup_code = sup.get("code") if sup is not None else None
        rubrics = _rubrics(el)
        mods.setdefault(modifier, {})[el.get("code", "")] = _ModifierClass(
            code=el.get("code", ""), parent=sup_code if sup_code != modifier else None,
            title=" ".join(t for k, t in rubrics if k == "preferred"),
            inclusions=[t for k, t in rubrics if k == "inclusion"])
    for classes in mods.values():
        for mc in classes.values():
            if mc.parent in classes:
                classes[mc.parent].children.append(mc.code)
            else:
                mc.parent = None
    return mods


def _read_modified_by(root: ET.Element) -> tuple[dict[str, list[tuple[str, frozenset | None]]], dict[str, set]]:
    """class code -> [(modifier, valid modifier classes or None for all)], and class code -> excluded modifiers."""
    own: dict[str, list[tuple[str, frozenset | None]]] = {}
    excluded: dict[str, set] = {}
    for el in root.iter("Class"):
        code = el.get("code", "")
        for mb in el.findall("ModifiedBy"):
            valid = [v.get("code", "") for v in mb.findall("ValidModifierClass")]
            allowed = frozenset(valid) if valid else (frozenset() if mb.get("all") == "false" else None)
            own.setdefault(code, []).append((mb.get("code", ""), allowed))
        for ex in el.findall("ExcludeModifier"):
            excluded.setdefault(code, set()).add(ex.get("code", ""))
    return own, excluded


def _allowed(mc: _ModifierClass, valid: frozenset | None, classes: dict[str, _ModifierClass]) -> bool:
    """A modifier class is used when all are valid, or it, one of its ancestors or one of its descendants is."""
    if valid is None:
        return True
    c: _ModifierClass | None = mc
    while c is not None:
        if c.code in valid:
            return True
        c = classes.get(c.parent) if c.parent else None
    stack = list(mc.children)
    while stack:
        k = stack.pop()
        if k in valid:
            return True
        stack.extend(classes[k].children)
    return False


def parse_ops_claml(path: Path) -> tuple[list[CodeInfo], list[Entry], dict]:
    """OPS ClaML (BfArM): one CodeInfo per category and per code generated from a subclassification."""
    root, classes, digest = read_claml(path, "the BfArM OPS ClaML file (opsYYYYsyst_claml_*.xml)")
    title_el = root.find("Title")
    version = title_el.get("version") if title_el is not None else None
    source = _source(path, version)
    by_code: dict[str, ClamlClass] = {c.code: c for c in classes}
    modifiers = _read_modifiers(root)
    own_mods, excluded_mods = _read_modified_by(root)

    def lineage(c: ClamlClass) -> list[ClamlClass]:
        """The class and its superclasses, nearest first."""
        out, seen = [c], {c.code}
        while c.superclass and c.superclass in by_code and c.superclass not in seen:
            c = by_code[c.superclass]
            out.append(c)
            seen.add(c.code)
        return out

    def effective_modifiers(c: ClamlClass) -> list[tuple[str, frozenset | None]]:
        mods: dict[str, frozenset | None] = {}
        for a in reversed(lineage(c)):
            for m in excluded_mods.get(a.code, ()):
                mods.pop(m, None)
            for m, valid in own_mods.get(a.code, ()):
                mods[m] = valid
        return [(m, v) for m, v in mods.items() if modifiers.get(m)]

    categories = [c for c in classes if c.kind == "category" and _level(c.code)]
    has_subclass = {c.superclass for c in categories}
    infos: dict[str, CodeInfo] = {}
    synonyms: dict[str, list[str]] = {}
    inclusions: dict[str, list[str]] = {}
    generated = unusable = 0

    for c in categories:
        title = " ".join(t for k, t in c.rubrics if k == "preferred")
        if not title:
            continue
        line = lineage(c)
        chapter = next((a.code for a in line if a.kind == "chapter"), line[-1].code)
        block = next((a.code for a in line[1:] if a.kind == "block"), "")
        sup = by_code.get(c.superclass) if c.superclass else None
        parent = sup.code if sup is not None and sup.kind == "category" and _level(sup.code) else None
        code = normalize_code(c.code, SYSTEM)
        infos[code] = CodeInfo(code, SYSTEM, title, True, parent, chapter, block, _category(code))
        synonyms[code] = [t for k, t in c.rubrics if k == "preferredLong"]
        inclusions[code] = [t for k, t in c.rubrics if k == "inclusion"]

    explicit = set(infos)
    for c in categories:
        base = infos.get(normalize_code(c.code, SYSTEM))
        if base is None or c.code in has_subclass:
            continue
        mods = effective_modifiers(c)
        stems = [base.code]
        for i, (m, valid) in enumerate(mods):
            last = i == len(mods) - 1
            mclasses = modifiers[m]
            keep = {k for k, mc in mclasses.items() if _allowed(mc, valid, mclasses)}
            next_stems: list[str] = []

            def add(stem: str, mc: _ModifierClass, parent: str) -> None:
                nonlocal generated, unusable
                code = normalize_code(stem + mc.code, SYSTEM)
                kids = [k for k in mc.children if k in keep]
                if not _level(code) or not mc.title:
                    unusable += 1
                    return
                if code not in explicit:
                    infos[code] = CodeInfo(code, SYSTEM, mc.title, last and not kids, parent, base.chapter,
                                           base.block, _category(code))
                    synonyms[code], inclusions[code] = [], list(mc.inclusions)
                    generated += 1
                if not kids:
                    next_stems.append(code)
                for k in kids:
                    add(stem, mclasses[k], code)

            for stem in stems:
                for mc in mclasses.values():
                    if mc.parent is None and mc.code in keep:
                        add(stem, mc, stem)
            stems = next_stems

    # A code is terminal when nothing (written out or generated) lies below it.
    parents_of_something = {i.parent for i in infos.values() if i.parent}
    codes = [CodeInfo(i.code, i.system, i.title, i.code not in parents_of_something, i.parent, i.chapter, i.block,
                      i.category) for i in infos.values()]
    if not codes:
        raise UserError(f"The catalogue file {path} holds no OPS classes; pass the BfArM OPS ClaML file "
                        "(opsYYYYsyst_claml_*.xml).")
    titles = {i.code: i.title for i in codes}
    parents = {i.code: i.parent for i in codes}
    entries: list[Entry] = []
    for info in codes:
        full = _full_title(info.code, titles, parents) if _level(info.code) >= 5 else ""
        entries.extend(_entries(info, [full, *synonyms[info.code]], inclusions[info.code], source))
    meta = {"path": str(path), "sha256": digest, "version": version, "codes": len(codes),
            "terminal": sum(c.terminal for c in codes), "from_modifiers": generated,
            "unusable_modifier_codes": unusable, "inclusions": sum(e.kind == "inclusion" for e in entries),
            "synonyms": sum(e.kind == "synonym" for e in entries)}
    return codes, entries, meta


# ------------------------------------------------------------------------------------------ Metadaten TXT

def parse_ops_codes(path: Path) -> tuple[list[CodeInfo], list[Entry], dict]:
    """OPS systematic codes table (`opsYYYYsyst_kodes.txt`): one CodeInfo per line, its title as Entry."""
    text, digest = read_text(path)
    source = _source(path)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows, bad = [], 0
    for line in lines:
        f = [x.strip() for x in line.split(";")]
        if (len(f) < MIN_CODES_FIELDS or f[0] not in ("3", "4", "5", "6") or f[1] not in ("T", "N")
                or _level(f[6].lower()) != int(f[0]) or not f[8] or not _DREISTELLER_RE.match(f[4])):
            bad += 1
            continue
        rows.append(f)
    _check_bad_lines(path, bad, len(lines),
                     f"an OPS codes table (opsYYYYsyst_kodes.txt, at least {MIN_CODES_FIELDS} ';'-separated fields)")

    # The table names a block by its first Dreisteller; its end is the last Dreisteller that names the same start.
    block_end: dict[str, str] = {}
    for f in rows:
        block_end[f[4]] = max(block_end.get(f[4], f[4]), f[6][:4])
    infos: list[CodeInfo] = []
    path_titles: dict[str, list[str]] = {}
    for f in rows:
        code = normalize_code(f[6], SYSTEM)
        level = int(f[0])
        parent = None if level == 3 else (code[:4] if level == 4 else code[:-1].rstrip("."))
        chapter = str(int(f[3])) if f[3].isdigit() else f[3]
        infos.append(CodeInfo(code, SYSTEM, f[8], f[1] == "T", parent, chapter, f"{f[4]}...{block_end[f[4]]}",
                              _category(code)))
        path_titles[code] = f[9:9 + level - 3] if level >= 4 else []
    titles = {i.code: i.title for i in infos}
    parents = {i.code: i.parent for i in infos}
    entries: list[Entry] = []
    for info in infos:
        full = ""
        if _level(info.code) >= 5:
            parts = path_titles[info.code]
            full = ": ".join(parts) if all(parts) else _full_title(info.code, titles, parents)
        entries.extend(_entries(info, [full], [], source))
    meta = {"path": str(path), "sha256": digest, "codes": len(infos), "terminal": sum(c.terminal for c in infos),
            "malformed_lines": bad}
    return infos, entries, meta
