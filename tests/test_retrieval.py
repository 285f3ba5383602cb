"""Retrieval on the real index (slow: needs `make setup`), and the index manifest checks on a small index."""

import json
from dataclasses import replace

import pytest

from oncocoder import cli
from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue
from oncocoder.index.embedding import embedding_config
from oncocoder.index.retrieve import RetrievalConfig, Retriever
from oncocoder.index.store import IndexConfig, build_index, load_index

pytestmark = pytest.mark.slow


def test_candidates_are_distinct_codable_codes(retriever, catalogue):
    result = retriever.search("Bronchialkarzinom des Oberlappens", k=10)
    assert set(result) == {"icd10gm", "icdo_topography", "icdo_morphology"}
    for system, cands in result.items():
        codes = [c.code for c in cands]
        assert len(codes) == 10 and len(set(codes)) == 10
        assert all(catalogue.is_valid(c, system) for c in codes)
        assert all(a.score >= b.score for a, b in zip(cands, cands[1:]))
    top = result["icd10gm"][0]
    assert top.code == "C34.1" and top.title == catalogue.title("C34.1", "icd10gm")
    assert top.matched == "Bronchialkarzinom des Oberlappens"
    assert result["icdo_topography"][0].code == "C34.1"


def test_abbreviated_text_and_category_expansion(retriever):
    icd = [c.code for c in retriever.search("Mamma-Ca li. oben außen", k=10, systems=["icd10gm"])["icd10gm"]]
    assert "C50.4" in icd[:3]
    # the subcodes of the retrieved category are in reach
    assert {"C50.2", "C50.9"} <= set(icd)


def test_history_convention_brings_z85(retriever):
    def codes(text):
        return [c.code for c in retriever.search(text, k=10, systems=["icd10gm"])["icd10gm"]]

    assert any(c.startswith("Z85") for c in codes("Z.n. Prostatakarzinom"))
    assert not any(c.startswith("Z85") for c in codes("Prostatakarzinom"))


def test_topography_follows_from_icd10(retriever):
    topo = [c.code for c in retriever.search("Haarzell-Leukämie", k=5)["icdo_topography"]]
    assert "C42.1" in topo


def test_morphology_uses_lexical_ranking_by_default(retriever):
    text = "Muzinöses Adenokarzinom des Colon ascendens"
    default = retriever.search(text, k=10)
    lexical = Retriever(retriever.index_cfg, RetrievalConfig(method="lexical", system_methods=()),
                        embedder=retriever.embedder).search(text, k=10, systems=["icdo_morphology"])
    fused = Retriever(retriever.index_cfg, RetrievalConfig(system_methods=()),
                      embedder=retriever.embedder).search(text, k=10, systems=["icd10gm"])
    assert default["icdo_morphology"] == lexical["icdo_morphology"]
    assert default["icd10gm"] == fused["icd10gm"]
    assert default["icdo_morphology"][0].code == "8480/3"
    with pytest.raises(UserError, match="Unknown retrieval method"):
        Retriever(retriever.index_cfg, RetrievalConfig(system_methods=(("icdo_morphology", "bm42"),)))


def test_bad_input(retriever):
    with pytest.raises(UserError, match="empty"):
        retriever.search("   ")
    with pytest.raises(UserError, match="limit"):
        retriever.search("Karzinom " * 100)
    with pytest.raises(UserError, match="Unknown system"):
        retriever.search("Magenkarzinom", systems=["ops"])
    with pytest.raises(UserError, match="-k"):
        retriever.search("Magenkarzinom", k=0)


def test_cli_search_json_and_batch(tmp_path, capsys):
    assert cli.main(["search", "Magenkarzinom", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(v) for v in out["candidates"].values()] == [3, 3, 3]
    assert set(out["candidates"]["icd10gm"][0]) == {"code", "title", "matched", "score"}

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "Magenkarzinom"}\n{"id": "b", "text": ""}\nnot json\n'
                   '{"id": "d", "text": "Rektumkarzinom"}\n')
    dst = tmp_path / "out.jsonl"
    assert cli.main(["search", "--input", str(src), "--output", str(dst), "-k", "5"]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", 3, "d"]
    assert rows[0]["candidates"]["icd10gm"][0]["code"] == "C16.9"
    assert rows[1]["candidates"] is None and "empty" in rows[1]["error"]
    assert "not a JSON object" in rows[2]["error"]
    assert len(rows[3]["candidates"]["icdo_topography"]) == 5


def test_cli_user_errors_are_one_sentence(capsys):
    assert cli.main(["search"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oncocoder: Give either a TEXT") and "Traceback" not in err


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, catalogue):
    """An index over a few categories, built with the real embedding model into a temporary cache."""
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ONCOCODER_CACHE")
    os.environ["ONCOCODER_CACHE"] = str(cache)
    # the default model folder is reused from the real cache through a link
    real_models = (__import__("pathlib").Path(old) if old else __import__("pathlib").Path.home() / ".cache" /
                   "oncocoder") / "models"
    (cache / "models").symlink_to(real_models)
    keep = ("C50", "C34", "C61", "8140", "8500", "8010")
    small = Catalogue(codes=catalogue.codes, sources=catalogue.sources,
                      entries=[e for e in catalogue.entries if e.category in keep or e.code[:3] in keep])
    cfg = IndexConfig(name="small")
    build_index(cfg, catalogue=small, progress=False)
    yield cfg, small
    if old is None:
        del os.environ["ONCOCODER_CACHE"]
    else:
        os.environ["ONCOCODER_CACHE"] = old


def test_small_index_round_trip(small_index):
    cfg, small = small_index
    r = Retriever(cfg, catalogue=small)
    assert r.search("Prostatakarzinom", k=1)["icd10gm"][0].code == "C61"
    manifest = json.loads((cfg.path() / "manifest.json").read_text())
    assert manifest["embedding"]["dim"] == 384
    assert manifest["systems"]["icd10gm"]["vectors"] == manifest["systems"]["icd10gm"]["rows"]
    assert set(manifest["catalogues"]) == {"icd10gm_codes", "alphaidse", "icdo3"}


def test_index_mismatches_are_refused(small_index, catalogue):
    cfg, small = small_index
    with pytest.raises(UserError, match="embedding model"):
        load_index(replace(cfg, embedding=embedding_config(quantize="none")), small)
    with pytest.raises(UserError, match="does not match the catalogue entries"):
        load_index(cfg, catalogue)  # the full catalogue is not what this index was built from
    other = Catalogue(codes=small.codes, entries=small.entries,
                      sources={**small.sources, "alphaidse": {**small.sources["alphaidse"], "sha256": "0" * 64}})
    with pytest.raises(UserError, match="other catalogue files"):
        load_index(cfg, other)
    manifest_path = cfg.path() / "manifest.json"
    saved = manifest_path.read_text()
    try:
        m = json.loads(saved)
        m["systems"]["icd10gm"]["vectors"] += 1
        manifest_path.write_text(json.dumps(m))
        with pytest.raises(UserError, match="vectors"):
            load_index(cfg, small)
        manifest_path.write_text("{broken")
        with pytest.raises(UserError, match="damaged"):
            load_index(cfg, small)
    finally:
        manifest_path.write_text(saved)
    with pytest.raises(UserError, match="No index"):
        load_index(replace(cfg, name="nowhere"), small)
