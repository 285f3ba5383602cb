import gzip

import pytest

from oncocoder.errors import UserError
from oncocoder.index import parsers
from oncocoder.index.catalogue import DEFAULT_FILES, load_catalogue, normalize_code


def test_icd10gm_codes_and_hierarchy(catalogue):
    meta = catalogue.sources["icd10gm_codes"]
    assert meta["codes"] == 16817 and meta["terminal"] == 14309
    info = catalogue.info("C50.4", "icd10gm")
    assert info.title == "Bösartige Neubildung: Oberer äußerer Quadrant der Brustdrüse"
    assert info.terminal and info.parent == "C50" and info.category == "C50" and info.chapter == "02"
    assert info.block == "C50-C50"
    assert catalogue.info("C34.1", "icd10gm").block == "C30-C39"
    assert [a.code for a in catalogue.ancestors("C90.00", "icd10gm")] == ["C90.0", "C90"]
    assert catalogue.is_valid("C50.4", "icd10gm")
    assert not catalogue.is_valid("C50", "icd10gm")  # a category with subcodes is not codable
    assert catalogue.is_valid("C50", "icd10gm", terminal_only=False)
    assert catalogue.is_valid("C73", "icd10gm")  # a terminal 3-character code
    assert not catalogue.is_valid("C50.7", "icd10gm")
    assert [d.code for d in catalogue.terminal_descendants("C90.0", "icd10gm")] == ["C90.00", "C90.01"]
    assert len(catalogue.list_codes("icd10gm")) == 14309


def test_normalize_code():
    assert normalize_code(" c509 ", "icd10gm") == "C50.9"
    assert normalize_code("C50.9-", "icd10gm") == "C50.9"
    assert normalize_code("A01.0+", "icd10gm") == "A01.0"
    assert normalize_code("C9000", "icd10gm") == "C90.00"
    assert normalize_code("8140:3", "icdo_morphology") == "8140/3"
    assert normalize_code("C341", "icdo_topography") == "C34.1"
    assert normalize_code("5870a2", "ops") == "5-870.a2"


def test_alphaidse_entries(catalogue):
    meta = catalogue.sources["alphaidse"]
    assert meta["lines"] == 90399 and meta["not_for_coding"] == 1557 and meta["malformed_lines"] == 0
    by_text = {e.text: e for e in catalogue.entries_of("icd10gm") if e.source == "alphaidse2025"}
    assert by_text["Mammakarzinom des oberen inneren Quadranten"].code == "C50.2"
    assert by_text["Mammakarzinom des oberen inneren Quadranten"].kind == "synonym"
    # a dagger/star line becomes an entry of its primary (dagger) code only
    assert by_text["Postinfektiöse Arthritis bei Enteritis durch Yersinia enterocolitica"].code == "A04.6"
    # every Alpha-ID entry names a codable 2025 code
    assert all(catalogue.is_valid(e.code, "icd10gm") for e in by_text.values())


def test_alpha2010_maps_onto_2025():
    cat = load_catalogue("alpha2010")
    meta = cat.sources["alpha2010"]
    assert meta["lines"] == 76135
    assert meta["kept"] > 70000 and meta["mapped"] > 0 and meta["dropped"] > 0
    assert meta["entries"] == meta["kept"] + meta["mapped"]
    assert parsers.map_to_2025("C50.2", cat) == ("C50.2", "kept")
    assert parsers.map_to_2025("C90.0", cat) == ("C90.00", "mapped")  # "ohne Angabe einer kompletten Remission"
    assert parsers.map_to_2025("C44.5", cat) == ("C44.59", "mapped")
    assert parsers.map_to_2025("D37.7", cat) == (None, "dropped")  # split by organ: no residual subcode
    assert all(cat.is_valid(e.code, "icd10gm") for e in cat.entries_of("icd10gm") if e.source == "alpha2010")


def test_icdo3(catalogue):
    meta = catalogue.sources["icdo3"]
    assert meta["version"] == "Zweite Revision" and meta["topography"] == 330 and meta["morphology"] == 1145
    info = catalogue.info("8140/3", "icdo_morphology")
    assert info.title == "Adenokarzinom o.n.A." and info.behaviour == "3" and info.block == "814-838"
    assert catalogue.info("8140:3", "icdo_morphology") == info
    texts = [e.text for e in catalogue.entries_of("icdo_morphology") if e.code == "8140/3"]
    assert "Azinäres Adenokarzinom der Prostata" in texts  # the topography reference is not part of the term
    topo = catalogue.info("C34.1", "icdo_topography")
    assert topo.title == "Lungenoberlappen" and topo.parent == "C34" and topo.terminal
    assert not catalogue.is_valid("C34", "icdo_topography")
    assert "Lingula" in [e.text for e in catalogue.entries_of("icdo_topography") if e.code == "C34.1"]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="missing"):
        parsers.parse_icd10gm_codes(tmp_path / "nope.txt")
    broken = tmp_path / "codes.txt.gz"
    broken.write_bytes(DEFAULT_FILES["icd10gm_codes"].read_bytes()[:5000])
    with pytest.raises(UserError, match="damaged gzip"):
        parsers.parse_icd10gm_codes(broken)
    wrong = tmp_path / "alpha.txt"
    wrong.write_text("1;25480;1;C34.1;;;Bronchialkarzinom des Oberlappens;\n" * 50)
    with pytest.raises(UserError, match="Alpha-ID-SE"):
        load_catalogue(files={"alphaidse": wrong})
    xml = tmp_path / "icdo.xml"
    xml.write_bytes(gzip.decompress(DEFAULT_FILES["icdo3"].read_bytes())[:20000])
    with pytest.raises(UserError, match="not valid XML"):
        parsers.parse_icdo3_claml(xml)
