"""Tests for oncocoder.index.ops: the OPS parsers for BfArM's ClaML and Metadaten-TXT formats.

Both sample files under tests/data are HAND-MADE in the BfArM formats, not the real catalogue (which is not
available offline): a few real OPS codes and titles of the blocks 5-40...5-41, 5-87...5-88 and 8-52...8-54.
The ClaML sample says so in its header comment; the TXT format has no comment lines, so it is said here:
tests/data/ops_sample_kodes.txt is a hand-made excerpt in the layout of opsYYYYsyst_kodes.txt (15 ';'-separated
fields, one line per code of 4 to 6 places; placeholder values in the unused fields 3, 8 and 13-15).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from oncocoder.errors import UserError
from oncocoder.index import ops
from oncocoder.index.catalogue import load_catalogue, normalize_code

DATA = Path(__file__).resolve().parent / "data"
CLAML = DATA / "ops_sample_claml.xml"
KODES = DATA / "ops_sample_kodes.txt"  # hand-made sample, see the module docstring

A2_TITLE = ("Defektdeckung durch Mobilisation und Adaptation von mehr als 25 % des Brustgewebes "
            "(mehr als 1 Quadrant)")
A2_FULL = ("Partielle (brusterhaltende) Exzision der Mamma und Destruktion von Mammagewebe: Partielle Resektion: "
           + A2_TITLE)
# The Dreisteller are classes in the ClaML; the TXT codes table has no lines for them.
DREISTELLER = {"5-40", "5-41", "5-87", "5-88", "8-52", "8-54"}
FROM_MODIFIERS = {"5-870.91", "5-870.a1", "5-870.a2", "8-522.d0", "8-522.d1"}
TERMINAL = {"5-401.10", "5-401.11", "5-407.x", "5-407.y", "5-413.x", "5-413.y", "5-870.91", "5-870.a1",
            "5-870.a2", "5-870.x", "5-870.y", "5-882.x", "5-882.y", "8-522.d0", "8-522.d1", "8-544", "8-547.0",
            "8-547.1"}
OPS_CODE = re.compile(r"^\d-\d{2}([0-9a-z](\.[0-9a-z]{1,2})?)?$")


@pytest.fixture(scope="module")
def claml():
    return ops.parse_ops_claml(CLAML)


@pytest.fixture(scope="module")
def kodes():
    return ops.parse_ops_codes(KODES)


def by_code(codes):
    return {c.code: c for c in codes}


def entries_of(entries, code, kind=None):
    return [e.text for e in entries if e.code == code and (kind is None or e.kind == kind)]


# ------------------------------------------------------------------------------------------ ClaML

def test_claml_codes_are_normalised_ops_codes(claml):
    codes, _, _ = claml
    assert len({c.code for c in codes}) == len(codes) == 35
    for c in codes:
        assert c.system == "ops"
        assert OPS_CODE.match(c.code), c.code
        assert normalize_code(c.code, "ops") == c.code
    info = by_code(codes)
    assert "5-870.a2" in info and "5870a2" not in info


def test_claml_terminal_and_hierarchy(claml):
    info = by_code(claml[0])
    assert {c.code for c in claml[0] if c.terminal} == TERMINAL
    a2 = info["5-870.a2"]
    assert (a2.terminal, a2.parent, a2.category, a2.chapter, a2.block) == (True, "5-870.a", "5-870", "5", "5-87...5-88")
    assert (info["5-870.a"].terminal, info["5-870.a"].parent) == (False, "5-870")
    assert (info["5-870"].terminal, info["5-870"].parent, info["5-870"].category) == (False, "5-87", "5-870")
    assert (info["5-87"].terminal, info["5-87"].parent, info["5-87"].category) == (False, None, "5-87")
    d1 = info["8-522.d1"]
    assert (d1.parent, d1.category, d1.chapter, d1.block) == ("8-522.d", "8-522", "8", "8-52...8-54")
    assert (info["8-544"].terminal, info["8-544"].parent) == (True, "8-54")
    assert info["5-401.11"].block == "5-40...5-41"
    # Chapters and blocks are not codes.
    assert not {"5", "8", "5-87...5-88", "8-52...8-54"} & set(info)


def test_claml_modifiers_generate_only_valid_subcodes(claml):
    codes, _, meta = claml
    info = by_code(codes)
    assert FROM_MODIFIERS <= set(info)
    assert meta["from_modifiers"] == len(FROM_MODIFIERS)
    # ValidModifierClass restricts: 5-870.9 takes only class 1 of ST5870, 5-870.a classes 1 and 2.
    assert "5-870.92" not in info and "5-870.90" not in info and "5-870.a3" not in info
    # A modifier class gives the title of the generated code.
    assert info["5-870.91"].title.startswith("Defektdeckung durch Mobilisation und Adaptation von bis zu 25 %")
    assert info["8-522.d0"].title == "Ohne bildgestützte Einstellung"
    # Written-out 6-place classes need no modifier.
    assert info["5-401.10"].title == "Ohne Markierung" and info["5-401.10"].parent == "5-401.1"


def test_claml_titles_keep_umlauts(claml):
    info = by_code(claml[0])
    assert info["5-401"].title == "Exzision einzelner Lymphknoten und Lymphgefäße"
    assert info["5-401.1"].title == "Axillär"
    assert info["5-870.a2"].title == A2_TITLE
    assert info["8-54"].title == "Zytostatische Chemotherapie, Immuntherapie und antiretrovirale Therapie"
    assert info["8-522.d1"].title == "Mit bildgestützter Einstellung"


def test_claml_entries(claml):
    codes, entries, _ = claml
    assert all(e.system == "ops" for e in entries)
    # One title entry per code.
    assert sorted(e.code for e in entries if e.kind == "title") == sorted(c.code for c in codes)
    # The inclusion rubric of 5-401, with the hierarchy of its code.
    inc = [e for e in entries if e.kind == "inclusion"]
    assert [(e.code, e.text) for e in inc] == [("5-401", "Entfernung mehrerer Sentinel-Lymphknoten")]
    assert (inc[0].chapter, inc[0].block, inc[0].category) == ("5", "5-40...5-41", "5-401")
    # Exclusions and notes are not terms for the code.
    texts = " | ".join(e.text for e in entries)
    assert "Neck dissection" not in texts
    assert "Sentinel- Lymphonodektomie ist gesondert" not in texts
    assert "Jeder stationäre Aufenthalt" not in texts
    # The full title of a 6-place code is a synonym; 4-place codes have none.
    assert entries_of(entries, "5-870.a2", "synonym") == [A2_FULL]
    assert entries_of(entries, "5-870", "synonym") == []
    # preferredLong, where it differs from title and full title, is a synonym too.
    assert ("Operationen am Lymphgewebe: Exzision einzelner Lymphknoten und Lymphgefäße: Axillär: "
            "Mit Radionuklidmarkierung (Sentinel-Lymphonodektomie)") in entries_of(entries, "5-401.11", "synonym")
    # A preferredLong equal to the full title gives no second entry; no code has the same text twice.
    assert entries_of(entries, "5-401.10", "synonym") == [
        "Exzision einzelner Lymphknoten und Lymphgefäße: Axillär: Ohne Markierung"]
    for code in {e.code for e in entries}:
        assert len(set(entries_of(entries, code))) == len(entries_of(entries, code)), code
    assert {e.source for e in entries} == {"ops2025"}


def test_claml_metadata(claml):
    _, entries, meta = claml
    assert meta["path"] == str(CLAML)
    assert meta["sha256"] == hashlib.sha256(CLAML.read_bytes()).hexdigest()
    assert meta["version"] == "2025"
    assert (meta["codes"], meta["terminal"], meta["inclusions"]) == (35, len(TERMINAL), 1)
    assert meta["synonyms"] == sum(e.kind == "synonym" for e in entries)


def test_claml_gzip_gives_the_same_records(claml, tmp_path):
    gz = tmp_path / "ops_sample_claml.xml.gz"
    gz.write_bytes(gzip.compress(CLAML.read_bytes()))
    codes, entries, meta = ops.parse_ops_claml(gz)
    assert codes == claml[0] and entries == claml[1]
    assert meta["sha256"] == hashlib.sha256(gz.read_bytes()).hexdigest() != claml[2]["sha256"]


SYNTHETIC_CLAML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Synthetic codes and titles, only to test how modifiers are applied. -->
<ClaML version="2.0.0">
  <Title name="OPS" version="2099">Test</Title>
  <Modifier code="M5"><SubClass code=".0"/><SubClass code=".1"/></Modifier>
  <Modifier code="M6"><SubClass code="0"/><SubClass code="1"/><SubClass code="x"/></Modifier>
  <ModifierClass code=".0" modifier="M5"><SuperClass code="M5"/>
    <Rubric kind="preferred"><Label xml:lang="de">Fünfte Null</Label></Rubric></ModifierClass>
  <ModifierClass code=".1" modifier="M5"><SuperClass code="M5"/>
    <Rubric kind="preferred"><Label xml:lang="de">Fünfte Eins</Label></Rubric>
    <Rubric kind="inclusion"><Label xml:lang="de">Einschluss der Eins</Label></Rubric></ModifierClass>
  <ModifierClass code="0" modifier="M6"><SuperClass code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Sechste Null</Label></Rubric></ModifierClass>
  <ModifierClass code="1" modifier="M6"><SuperClass code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Sechste Eins</Label></Rubric></ModifierClass>
  <ModifierClass code="x" modifier="M6"><SuperClass code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Sechste Sonstige</Label></Rubric></ModifierClass>
  <Class code="9" kind="chapter"><Rubric kind="preferred"><Label xml:lang="de">Kapitel</Label></Rubric></Class>
  <Class code="9-90...9-90" kind="block"><SuperClass code="9"/>
    <Rubric kind="preferred"><Label xml:lang="de">Block</Label></Rubric></Class>
  <Class code="9-90" kind="category"><SuperClass code="9-90...9-90"/>
    <Rubric kind="preferred"><Label xml:lang="de">Dreisteller</Label></Rubric></Class>
  <Class code="9-900" kind="category"><SuperClass code="9-90"/>
    <ModifiedBy code="M5"/>
    <ModifiedBy code="M6"><ValidModifierClass code="0"/><ValidModifierClass code="1"/></ModifiedBy>
    <Rubric kind="preferred"><Label xml:lang="de">Zwei Modifikatoren nacheinander</Label></Rubric></Class>
  <Class code="9-901" kind="category"><SuperClass code="9-90"/>
    <ModifiedBy code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Vererbt an die Unterklassen</Label></Rubric></Class>
  <Class code="9-901.0" kind="category"><SuperClass code="9-901"/>
    <Rubric kind="preferred"><Label xml:lang="de">Erbt M6</Label></Rubric></Class>
  <Class code="9-901.1" kind="category"><SuperClass code="9-901"/><ExcludeModifier code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Schließt M6 aus</Label></Rubric></Class>
  <Class code="9-903" kind="category"><SuperClass code="9-90"/><ModifiedBy code="M5"/>
    <Rubric kind="preferred"><Label xml:lang="de">Erbt M5 an eine ausgeschriebene Fünfte</Label></Rubric></Class>
  <Class code="9-903.2" kind="category"><SuperClass code="9-903"/>
    <Rubric kind="preferred"><Label xml:lang="de">Keine Stelle mehr frei</Label></Rubric></Class>
  <Class code="9-902" kind="category"><SuperClass code="9-90"/>
    <ModifiedBy all="false" code="M6"/>
    <Rubric kind="preferred"><Label xml:lang="de">Keine gültige Modifikatorklasse</Label></Rubric></Class>
</ClaML>
"""


def test_claml_modifier_rules(tmp_path):
    path = tmp_path / "synthetic_claml.xml"
    path.write_text(SYNTHETIC_CLAML, encoding="utf-8")
    codes, entries, meta = ops.parse_ops_claml(path)
    info = by_code(codes)
    # Two modifiers one after another: 9-900 -> 9-900.0 / 9-900.1 (not terminal) -> 9-900.00 ... (valid: 0, 1).
    assert {c for c in info if c.startswith("9-900.")} == {"9-900.0", "9-900.1", "9-900.00", "9-900.01",
                                                           "9-900.10", "9-900.11"}
    assert (info["9-900.1"].terminal, info["9-900.1"].parent, info["9-900.1"].title) == (False, "9-900", "Fünfte Eins")
    assert (info["9-900.11"].terminal, info["9-900.11"].parent, info["9-900.11"].title) == (True, "9-900.1",
                                                                                             "Sechste Eins")
    assert entries_of(entries, "9-900.1", "inclusion") == ["Einschluss der Eins"]
    assert entries_of(entries, "9-900.11", "synonym") == ["Zwei Modifikatoren nacheinander: Fünfte Eins: Sechste Eins"]
    # A modifier is inherited by subclasses (expanded where no written-out subclass follows), unless excluded.
    assert {c for c in info if c.startswith("9-901.")} == {"9-901.0", "9-901.1", "9-901.00", "9-901.01",
                                                           "9-901.0x"}
    assert (info["9-901.0x"].title, info["9-901.0x"].parent) == ("Sechste Sonstige", "9-901.0")
    assert info["9-901.1"].terminal and not info["9-901.0"].terminal and not info["9-901"].terminal
    # all="false" without any ValidModifierClass generates nothing.
    assert info["9-902"].terminal and not any(c.startswith("9-902.") for c in info)
    # Inherited onto a written-out 5th place, M5 (`.0`, `.1`) would give no OPS code: nothing is generated.
    assert {c for c in info if c.startswith("9-903")} == {"9-903", "9-903.2"} and info["9-903.2"].terminal
    assert (meta["from_modifiers"], meta["unusable_modifier_codes"], meta["version"]) == (9, 2, "2099")
    assert {e.source for e in entries} == {"ops2099"}  # the year comes from the ClaML version


# ------------------------------------------------------------------------------------------ Metadaten TXT

def test_kodes_codes_and_hierarchy(kodes):
    codes, _, meta = kodes
    info = by_code(codes)
    assert len(info) == len(codes) == 29
    assert all(OPS_CODE.match(c) and normalize_code(c, "ops") == c for c in info)
    assert {c for c, i in info.items() if i.terminal} == TERMINAL
    a2 = info["5-870.a2"]
    assert (a2.title, a2.terminal, a2.parent, a2.category, a2.chapter, a2.block) == (
        A2_TITLE, True, "5-870.a", "5-870", "5", "5-87...5-88")
    assert (info["5-870"].parent, info["5-870"].terminal) == ("5-87", False)
    assert info["5-882.x"].block == "5-87...5-88"  # the block end comes from the last Dreisteller of the block
    assert info["8-547.1"].block == "8-52...8-54"
    assert info["5-401.1"].title == "Axillär"
    assert not DREISTELLER & set(info)
    assert (meta["codes"], meta["terminal"], meta["malformed_lines"]) == (29, len(TERMINAL), 0)
    assert meta["path"] == str(KODES) and meta["sha256"] == hashlib.sha256(KODES.read_bytes()).hexdigest()


def test_kodes_entries(kodes):
    codes, entries, _ = kodes
    assert sorted(e.code for e in entries if e.kind == "title") == sorted(c.code for c in codes)
    assert entries_of(entries, "5-870.a2", "synonym") == [A2_FULL]
    assert entries_of(entries, "8-522.d1", "synonym") == [
        "Hochvoltstrahlentherapie: Linearbeschleuniger mehr als 6 MeV Photonen oder schnelle Elektronen, "
        "3D-geplante Bestrahlung: Mit bildgestützter Einstellung"]
    assert not any(e.kind == "inclusion" for e in entries)  # the table has no inclusions
    assert {e.source for e in entries} == {"ops"}  # no year in the sample's file name


def test_kodes_latin1_and_year_from_file_name(kodes, tmp_path):
    path = tmp_path / "ops2025syst_kodes.txt"
    path.write_bytes(KODES.read_text(encoding="utf-8").encode("iso-8859-1"))
    codes, entries, meta = ops.parse_ops_codes(path)
    assert [(c.code, c.title) for c in codes] == [(c.code, c.title) for c in kodes[0]]
    assert by_code(codes)["5-401"].title.endswith("Lymphgefäße")
    assert {e.source for e in entries} == {"ops2025"}
    assert meta["sha256"] != kodes[2]["sha256"]


# ------------------------------------------------------------------------------------------ both formats

def test_both_formats_agree_on_shared_codes(claml, kodes):
    a, b = by_code(claml[0]), by_code(kodes[0])
    assert set(a) - set(b) == DREISTELLER
    assert set(b) <= set(a)
    for code, info in b.items():
        assert a[code] == info, code
    titles_a = {(e.code, e.text) for e in claml[1] if e.kind == "title" and e.code in b}
    titles_b = {(e.code, e.text) for e in kodes[1] if e.kind == "title"}
    assert titles_a == titles_b
    syn_b = {(e.code, e.text) for e in kodes[1] if e.kind == "synonym"}
    assert syn_b and syn_b <= {(e.code, e.text) for e in claml[1] if e.kind == "synonym"}


@pytest.mark.parametrize("key, ancestors", [
    ("ops_claml", ["5-870.a", "5-870", "5-87"]),
    ("ops_codes", ["5-870.a", "5-870"]),  # the codes table has no Dreisteller
])
def test_load_catalogue_exposes_ops(key, ancestors):
    cat = load_catalogue(files={key: str(CLAML if key == "ops_claml" else KODES)})
    assert "ops" in cat.systems and "icd10gm" in cat.systems
    assert cat.is_valid("5-870.a2", "ops")
    assert cat.is_valid("5870a2", "ops")  # normalised on lookup
    assert not cat.is_valid("5-870.a", "ops")  # not terminal
    assert cat.is_valid("5-870.a", "ops", terminal_only=False)
    assert not cat.is_valid("5-870.a3", "ops")
    assert cat.title("5-870.a2", "ops") == A2_TITLE
    assert cat.title("5-401.1", "ops") == "Axillär"
    assert [i.code for i in cat.ancestors("5-870.a2", "ops")] == ancestors
    assert {i.code for i in cat.terminal_descendants("5-870", "ops")} == {
        "5-870.91", "5-870.a1", "5-870.a2", "5-870.x", "5-870.y"}
    assert sorted(cat.list_codes("ops")) == sorted(TERMINAL)
    assert cat.sources[key]["terminal"] == len(TERMINAL)
    assert {e.code for e in cat.entries_of("ops") if e.kind == "title"} >= TERMINAL


# ------------------------------------------------------------------------------------------ bad files

@pytest.mark.parametrize("parse", [ops.parse_ops_claml, ops.parse_ops_codes])
def test_missing_file_raises_user_error(parse, tmp_path):
    path = tmp_path / "ops2025syst_missing.xml"
    with pytest.raises(UserError, match="is missing") as exc:
        parse(path)
    assert str(path) in str(exc.value)


def test_truncated_claml_raises_user_error(tmp_path):
    path = tmp_path / "truncated.xml"
    raw = CLAML.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="not valid XML") as exc:
        ops.parse_ops_claml(path)
    assert str(path) in str(exc.value)


def test_claml_without_ops_classes_raises_user_error(tmp_path):
    path = tmp_path / "icdo_like.xml"
    path.write_text('<ClaML version="2.0.0"><Class code="C50.9" kind="category"><Rubric kind="preferred">'
                    '<Label xml:lang="de">Brustdrüse o.n.A.</Label></Rubric></Class></ClaML>', encoding="utf-8")
    with pytest.raises(UserError, match="holds no OPS classes") as exc:
        ops.parse_ops_claml(path)
    assert str(path) in str(exc.value)


def test_non_claml_xml_raises_user_error(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text("<root/>", encoding="utf-8")
    with pytest.raises(UserError, match="not a ClaML file"):
        ops.parse_ops_claml(path)


@pytest.mark.parametrize("content", [
    KODES.read_text(encoding="utf-8").replace(";", "\t"),  # wrong separator
    KODES.read_text(encoding="utf-8").replace(";", "|"),
    # an ICD-10-GM codes line is no OPS line
    "4;T;X;01;A00;A00.0;A00.0;A000;Cholera durch Vibrio cholerae O:1, Biovar cholerae;Cholera;;;P;P;1-002;2-001;"
    "3-003;4-002;001;9;9;9999;9999;9;J;J;J;J\n",
    "",  # empty
])
def test_corrupt_codes_table_raises_user_error(content, tmp_path):
    path = tmp_path / "ops2025syst_kodes.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="does not look like an OPS codes table") as exc:
        ops.parse_ops_codes(path)
    assert str(path) in str(exc.value)


def test_claml_given_as_codes_table_raises_user_error():
    with pytest.raises(UserError, match="does not look like an OPS codes table"):
        ops.parse_ops_codes(CLAML)


def test_codes_table_tolerates_a_rare_bad_line(tmp_path):
    good = KODES.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "ops2025syst_kodes.txt"
    path.write_text("\n".join(good * 4 + ["kaputte Zeile"]) + "\n", encoding="utf-8")  # 1 bad of 117 lines
    codes, _, meta = ops.parse_ops_codes(path)
    assert meta["malformed_lines"] == 1 and meta["codes"] == 4 * 29
