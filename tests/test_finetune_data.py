"""Tests for oncocoder.finetune.data: the instruction data built from the real catalogues.

The builds here are small (`limit`, task subsets); the RAG format is tested with a stub retriever (fast) and once
with the real index (slow). The questions are parsed back with the templates of agent/prompts.py, so every test also
checks that each user message is exactly a prompts question.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

from oncocoder import config
from oncocoder.agent import prompts
from oncocoder.agent.coder import CoderConfig
from oncocoder.errors import UserError
from oncocoder.eval.testset import load_testset
from oncocoder.finetune import data
from oncocoder.finetune.data import DataConfig, abbreviate, build_dataset, normalize_text
from oncocoder.index.crosswalk import load_conventions, topography_for
from oncocoder.index.catalogue import load_catalogue
from oncocoder.index.normalize import Abbreviation, Abbreviations, expand, fold

SMALL_LIMIT = 4000


# ------------------------------------------------------------------------------------------ helpers

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _template_re(key: str, variant: int) -> re.Pattern:
    pre, post = prompts.QUESTIONS[key][variant].split("{text}")
    return re.compile(re.escape(pre) + r"(.+?)" + re.escape(post) + r"\Z", re.S)


def parse(line: dict) -> tuple[str, list[tuple[str, str]] | None]:
    """(the text the question asks about, [(label, shown option)] for RAG questions). Fails unless the user
    message is exactly a prompts.py question with the line's template."""
    user, task = line["messages"][0]["content"], line["task"]
    options = None
    if line["format"] == "rag" and task != "is_tumor":
        question, rest = user.split("\nOptionen:\n", 1)
        lines = rest.split("\n")
        assert lines[-1] == prompts.RAG_INSTRUCTION
        options = [(opt[0], opt[3:]) for opt in lines[:-1]]
        assert [label for label, _ in options] == list(prompts.LABELS[:len(options)])
        assert all(opt[1:3] == ") " for opt in lines[:-1])
    elif task == "icdo_morphology":
        hint = " " + prompts.NO_MORPHOLOGY_HINT
        assert user.endswith(hint), user
        question = user[:-len(hint)]
    else:
        question = user
    m = _template_re(task, line["template"]).match(question)
    assert m, (task, line["template"], question)
    return m.group(1), options


def option_code(shown: str) -> str:
    return prompts.NO_MORPHOLOGY if shown == prompts.OPTION_NONE_TEXT else shown.split(" ", 1)[0]


@pytest.fixture(scope="module")
def cat():
    return load_catalogue()


@pytest.fixture(scope="module")
def small(tmp_path_factory, cat):
    """All tasks, plain only, a few thousand pairs."""
    out = tmp_path_factory.mktemp("small")
    stats = build_dataset(DataConfig(out=out, limit=SMALL_LIMIT, rag=False), catalogue=cat, progress=False)
    return out, stats, read_jsonl(out / "plain.jsonl")


class Cand(NamedTuple):
    code: str
    title: str


class StubRetriever:
    """Stands in for the Retriever: the gold code first for texts of even length (a hit), never for texts of odd
    length (a miss), then the same distractors every time."""

    def __init__(self, cat):
        self.catalogue = cat
        self.codes_of = {s: defaultdict(list) for s in config.SYSTEMS}
        for e in cat.entries:
            if e.system in self.codes_of and cat.is_valid(e.code, e.system):
                self.codes_of[e.system][e.text].append(e.code)
        self.distractors = {s: sorted(cat.list_codes(s))[:40] for s in config.SYSTEMS}
        self.calls = 0

    def search(self, text, k=10, systems=None):
        self.calls += 1
        out = {}
        for s in systems:
            gold = self.codes_of[s].get(text, [])[:1] if len(text) % 2 == 0 else []
            codes = gold + [c for c in self.distractors[s] if c not in gold]
            out[s] = [Cand(c, self.catalogue.title(c, s)) for c in codes[:k]]
        return out

    def search_many(self, texts, k=10, systems=None):
        return [self.search(t, k, systems) for t in texts]


@pytest.fixture(scope="module")
def stub_rag(tmp_path_factory, cat):
    out = tmp_path_factory.mktemp("stubrag")
    cfg = DataConfig(out=out, limit=300, rag_size=120, tasks=("icd10gm", "icdo_topography", "icdo_morphology",
                                                                "is_tumor"))
    stats = build_dataset(cfg, catalogue=cat, retriever=StubRetriever(cat), progress=False)
    return out, stats, read_jsonl(out / "rag.jsonl")


def check_rag_line(line: dict, cat) -> None:
    """The answer letter points at the gold option; the options are as the agent shows them."""
    text, options = parse(line)
    assert line["format"] == "rag"
    if line["task"] == "is_tumor":
        assert options is None and line["messages"][1]["content"] in (prompts.YES, prompts.NO)
        assert line["gold_retrieved"] is None and line["gold_position"] is None
        return
    system = line["task"]
    k = CoderConfig().k[system]
    answer = line["messages"][1]["content"]
    labels = [label for label, _ in options]
    assert answer in labels
    pos = labels.index(answer)
    assert pos == line["gold_position"]
    codes = [option_code(shown) for _, shown in options]
    assert len(set(codes)) == len(codes)
    if system == "icdo_morphology":
        assert len(options) == k + 1 and options[-1][1] == prompts.OPTION_NONE_TEXT
    else:
        assert len(options) == k
    if line["code"] is None:  # `keine`
        assert system == "icdo_morphology" and pos == len(options) - 1
    else:
        assert codes[pos] == line["code"] and cat.is_valid(line["code"], system)
        assert options[pos][1] == f"{line['code']} {cat.title(line['code'], system)}"
    for code in codes:
        assert code == prompts.NO_MORPHOLOGY or cat.is_valid(code, system)


# ------------------------------------------------------------------------------------------ plain format

def test_plain_answers_are_what_the_decoder_produces(small, cat):
    _, _, lines = small
    assert len(lines) == SMALL_LIMIT
    seen_tasks = Counter()
    for line in lines:
        text, _ = parse(line)
        task, answer = line["task"], line["messages"][1]["content"]
        assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
        assert line["format"] == "plain" and line["augmented"] in (None, "abbreviated")
        seen_tasks[task] += 1
        if task in ("icd10gm", "icdo_topography"):
            assert answer == line["code"] and line["system"] == task and cat.is_valid(answer, task)
        elif task == "icdo_morphology":
            if line["code"] is None:
                assert answer == prompts.NO_MORPHOLOGY and line["system"] is None
            else:
                assert answer == line["code"] and re.fullmatch(r"\d{4}/\d", answer)
                assert cat.is_valid(answer, "icdo_morphology")
        elif task == "is_tumor":
            assert answer in (prompts.YES, prompts.NO) and line["code"] is None
        else:
            assert task == "title"
            assert text == line["code"] and answer == cat.title(line["code"], line["system"])
    assert set(seen_tasks) == set(data.TASKS)


def test_plain_proportions_and_scale(small):
    _, stats, lines = small
    kinds = stats["plain"]["by_answer_kind"]
    positives, negatives = kinds["is_tumor:ja"], kinds["is_tumor:nein"]
    assert 0.35 <= positives / (positives + negatives) <= 0.45
    assert kinds["icdo_morphology:keine"] > 0
    # the full build (before the limit) reaches the paper's scale
    assert stats["available_after_filters_total"] >= 500_000
    # the limit keeps the task proportions
    avail = stats["available_after_filters"]
    for task, n in stats["plain"]["by_task"].items():
        assert abs(n / SMALL_LIMIT - avail[task] / stats["available_after_filters_total"]) < 0.005
    assert stats["plain"]["augmented"].get("icd10gm", 0) > 0


@pytest.fixture(scope="module")
def pools(cat):
    return data._Pools(cat, DataConfig())


def test_templates_vary_per_term_and_tumor_terms_get_more(pools):
    examples = data.gen_icd10gm(pools)
    per_term: dict[tuple[str, str], list[int]] = defaultdict(list)
    tumor: dict[tuple[str, str], bool] = {}
    for ex in examples:
        if ex.augmented is None:
            per_term[(ex.text, ex.code)].append(ex.template)
            tumor[(ex.text, ex.code)] = ex.chapter == "02"
    for key, templates in per_term.items():
        assert len(templates) == len(set(templates))  # distinct templates per term
        assert len(templates) == (5 if tumor[key] else data.OTHER_WEIGHT)
    other_sets = Counter(tuple(sorted(t)) for k, t in per_term.items() if not tumor[k])
    assert len(other_sets) == 10  # every 3-of-5 choice occurs: not the same templates for every term
    chapters = {ex.chapter for ex in examples}
    assert chapters == {f"{i:02d}" for i in range(1, 23)}


def test_morphology_keine_share(pools, cat):
    examples = data.gen_morphology(pools)
    keine = [ex for ex in examples if ex.answer == prompts.NO_MORPHOLOGY]
    assert abs(len(keine) / len(examples) - data.KEINE_SHARE) < 0.002
    for ex in keine:
        assert ex.code is None and ex.chapter != "02"
        assert all(data.tumor_label(c, cat) is False for c in pools.codes_of_text[normalize_text(ex.text)])
    coded = [ex for ex in examples if ex.code is not None]
    assert {ex.code for ex in coded} == {e.code for e in cat.entries_of("icdo_morphology")}


def test_is_tumor_labels_and_hard_negatives(pools, cat):
    examples = data.gen_is_tumor(pools)
    rules = data.load_hard_negative_rules()
    hard = sum(1 for ex in examples if ex.answer == prompts.NO and rules.matches(ex.text, ex.term_code))
    negatives = sum(1 for ex in examples if ex.answer == prompts.NO)
    _, negative_terms = data._is_tumor_terms(pools)
    base_rate = sum(1 for t, c in negative_terms if rules.matches(t.text, c)) / len(negative_terms)
    assert hard / negatives > 2 * base_rate  # oversampled
    assert 0.38 <= (len(examples) - negatives) / len(examples) <= 0.42
    for ex in random.Random(0).sample(examples, 3000):
        if ex.term_code is None:
            continue
        codes = pools.codes_of_text[normalize_text(ex.term)]
        labels = {data.tumor_label(c, cat) for c in codes}
        assert (ex.answer == prompts.YES) == (True in labels)
        if ex.answer == prompts.NO:
            assert not any(c.startswith(("Z08", "Z86.0")) for c in codes)
    assert any(ex.answer == prompts.YES and ex.term_code.startswith("Z85") for ex in examples if ex.term_code)


def test_is_tumor_takes_ops_titles_as_hard_negatives():
    sample = Path(__file__).resolve().parent / "data" / "ops_sample_kodes.txt"
    cat = load_catalogue(files={"ops_codes": sample})
    pools = data._Pools(cat, DataConfig())
    examples = data.gen_is_tumor(pools)
    ops = [ex for ex in examples if ex.source.startswith("ops")]
    assert ops and all(ex.answer == prompts.NO for ex in ops)
    assert {ex.text for ex in ops} <= {e.text for e in cat.entries_of("ops")}


def test_hard_negative_rules():
    rules = data.load_hard_negative_rules()
    assert rules.matches("Kolonpolyp") and rules.matches("Subdurales Hämatom") and rules.matches("Ovarialzyste")
    assert not rules.matches("Down-Syndrom") and not rules.matches("Pneumonie")
    assert rules.matches("Strahlentherapie-Sitzung", "Z51.0") and rules.matches("irgendwas", "K12.3")


def test_hard_negative_codes_exist_outside_chapter_ii(cat):
    codes = cat.codes["icd10gm"]
    for prefix in data.load_hard_negative_rules().codes:
        hits = [i for c, i in codes.items() if c.startswith(prefix) and i.terminal]
        assert hits, prefix
        assert all(i.chapter != "02" for i in hits), prefix


# ------------------------------------------------------------------------------------------ topography conventions

@pytest.mark.parametrize("icd10, topography", [
    ("C61", "C61.9"), ("C73", "C73.9"), ("C50.4", "C50.4"), ("C34.1", "C34.1"), ("C43.5", "C44.5"),
    ("C44.50", "C44.5"), ("C41.01", "C41.0"), ("C91.00", "C42.1"), ("C90.00", "C42.1"), ("C22.3", "C22.0"),
    ("C80.0", "C80.9"), ("D03.5", "C44.5"), ("D12.3", "C18.4"), ("C45.0", "C38.4"),
    ("C77.0", None), ("C79.5", None), ("C81.0", "C77.9"), ("C92.30", None), ("C90.20", None), ("C46.7", None),
    ("D03.8", None), ("E11.9", None), ("Z85.3", None),
])
def test_topography_for(cat, icd10, topography):
    assert topography_for(icd10, cat) == topography


def test_conventions_file_is_consistent(cat):
    conventions = load_conventions()
    icd = [c for c, i in cat.codes["icd10gm"].items() if i.terminal]
    for conv in conventions:
        covered = [c for c in icd if c.startswith(conv.icd10_pattern)]
        assert covered, f"pattern {conv.icd10_pattern} matches no ICD-10-GM code"
        if conv.rule == "fixed":
            assert cat.is_valid(conv.topography, "icdo_topography"), conv
        if conv.rule == "digit":
            assert any(topography_for(c, cat) for c in covered), conv
    derived = [topography_for(c, cat) for c in icd]
    assert all(t is None or cat.is_valid(t, "icdo_topography") for t in derived)
    # only chapter II codes get a topography
    assert all(t is None or cat.info(c, "icd10gm").chapter == "02" for c, t in zip(icd, derived))


# ------------------------------------------------------------------------------------------ abbreviation

def table(*rows) -> Abbreviations:
    return Abbreviations([Abbreviation(*r) for r in rows])


TABLE = table(("Ca", "Karzinom", "histology", ""), ("Karz.", "Karzinom", "histology", ""),
              ("Z.n.", "Zustand nach", "status", ""), ("breast", "Mamma", "location", "English"),
              ("carcinom", "Karzinom", "histology", "spelling variant (c/k)"),
              ("NHL", "Non-Hodgkin-Lymphom", "entity", ""), ("HL", "Hodgkin-Lymphom", "entity", ""),
              ("li.", "links", "laterality", ""), ("OL", "Oberlappen", "location", ""))


def test_abbreviate_reverses_the_table():
    assert abbreviate("Mammakarzinom", TABLE) == "Mamma-Ca"  # compound: prefix-hyphen-abbreviation
    assert abbreviate("Karzinom der Lunge", TABLE) == "Ca der Lunge"
    assert abbreviate("Zustand nach Mammakarzinom links", TABLE) == "Z.n. Mamma-Ca li."
    assert abbreviate("Bronchialkarzinom im Oberlappen", TABLE) == "Bronchial-Ca im OL"
    assert abbreviate("Non-Hodgkin-Lymphom", TABLE) == "NHL"


def test_abbreviate_uses_only_abbreviations_and_whole_words():
    assert abbreviate("Mamma", TABLE) == "Mamma"  # English row not used backwards
    assert abbreviate("Karzinomatose", TABLE) == "Karzinomatose"  # not a whole word
    assert abbreviate("Pneumonie", TABLE) == "Pneumonie"
    assert abbreviate("Non-Hodgkin-Lymphom", table(("HL", "Hodgkin-Lymphom", "entity", ""))) == \
        "Non-Hodgkin-Lymphom"  # part of a hyphenated word
    assert abbreviate("Oberlappenbronchus", TABLE) == "Oberlappenbronchus"  # locations only as whole words


def test_abbreviate_is_deterministic_for_a_seed():
    outs = {abbreviate("Mammakarzinom", TABLE, random.Random(s)) for s in range(30)}
    assert outs == {"Mamma-Ca", "Mamma-Karz."}
    assert all(abbreviate("Mammakarzinom", TABLE, random.Random(s)) ==
               abbreviate("Mammakarzinom", TABLE, random.Random(s)) for s in range(10))


@pytest.mark.parametrize("text", ["Mammakarzinom", "Akute myeloische Leukämie", "Lebermetastase",
                                  "Zustand nach Bronchialkarzinom"])
def test_abbreviate_with_the_real_table_round_trips_through_expand(text):
    key = lambda s: fold(s).replace("-", "").replace(" ", "")  # noqa: E731
    for seed in range(15):
        short = abbreviate(text, rng=random.Random(seed))
        assert short != text
        assert key(expand(short)) == key(text), (text, short, expand(short))


# ------------------------------------------------------------------------------------------ determinism

def test_same_seed_same_bytes_other_seed_other_data(tmp_path, cat):
    def build(name, seed):
        cfg = DataConfig(out=tmp_path / name, limit=800, seed=seed, rag=False,
                         tasks=("icdo_topography", "icdo_morphology"))
        build_dataset(cfg, catalogue=cat, progress=False)
        return {f: (tmp_path / name / f).read_bytes() for f in ("plain.jsonl", "heldout.jsonl")}

    a, b, c = build("a", 13), build("b", 13), build("c", 14)
    assert a == b
    assert a["plain.jsonl"] != c["plain.jsonl"] and a["heldout.jsonl"] != c["heldout.jsonl"]
    sa = json.loads((tmp_path / "a" / "stats.json").read_text())
    sb = json.loads((tmp_path / "b" / "stats.json").read_text())
    for s in (sa, sb):
        s.pop("timing"), s.pop("peak_memory_mib"), s.pop("built_at"), s["config"].pop("out")
    assert sa == sb


# ------------------------------------------------------------------------------------------ leakage guard

def test_planted_test_set_duplicate_is_removed(tmp_path, cat):
    def build(name, exclude=()):
        cfg = DataConfig(out=tmp_path / name, rag=False, tasks=("icdo_morphology",), exclude=exclude)
        stats = build_dataset(cfg, catalogue=cat, progress=False)
        return stats, [parse(line)[0] for line in read_jsonl(tmp_path / name / "plain.jsonl")]

    base_stats, base_texts = build("base")
    counts = Counter(normalize_text(t) for t in base_texts)
    planted = next(t for t in sorted(set(base_texts)) if counts[normalize_text(t)] >= 3 and " " in t)
    written = "  " + planted.upper().replace(" ", " ,  ") + "."  # other case, punctuation and spacing
    test_set = tmp_path / "planted.jsonl"
    test_set.write_text(json.dumps({"id": "P1", "text": written, "icd10gm": None, "icdo_topography": None,
                                    "icdo_morphology": None, "is_tumor": True}) + "\n", encoding="utf-8")
    stats, texts = build("guarded", (test_set,))
    assert normalize_text(planted) not in {normalize_text(t) for t in texts}
    assert stats["excluded"]["leakage_pairs"]["plain"] == \
        base_stats["excluded"]["leakage_pairs"].get("plain", 0) + counts[normalize_text(planted)]
    assert len(texts) == len(base_texts) - counts[normalize_text(planted)]
    assert [t["path"] for t in stats["excluded"]["test_sets"]][-1] == str(test_set)
    card = (tmp_path / "guarded" / "README.md").read_text(encoding="utf-8")
    assert f"Excluded (leakage) pairs: {json.dumps(stats['excluded']['leakage_pairs'])}" in card


def test_dev_set_is_always_excluded(small):
    from oncocoder.eval.testset import DEV_SET

    _, stats, _ = small
    assert stats["excluded"]["test_sets"][0]["path"] == str(DEV_SET)


def test_normalize_text():
    assert normalize_text("  Mamma-Ca  li., OÄQ ") == "mamma ca li oaeq"
    assert normalize_text("Bösartige Neubildung: Brustdrüse") == "boesartige neubildung brustdruese"


# ------------------------------------------------------------------------------------------ held-out split

def test_heldout_categories_absent_from_training_and_loadable(small, cat):
    out, stats, lines = small
    held = set(stats["heldout"]["categories"])
    assert len(held) >= 40 and len(stats["heldout"]["tumor_categories"]) >= 4
    assert any(c.startswith("C") for c in stats["heldout"]["tumor_categories"])
    held_texts = {normalize_text(e.text) for e in cat.entries_of("icd10gm") if e.category in held}
    held_texts |= {normalize_text(i.title) for i in cat.codes["icd10gm"].values() if i.category in held}
    for line in lines:
        text, _ = parse(line)
        shown = line["messages"][1]["content"] if line["task"] == "title" else text
        assert normalize_text(shown) not in held_texts, line
        if line["system"] == "icd10gm":
            assert line["code"][:3] not in held
    ts = load_testset(out / "heldout.jsonl", cat)
    assert ts.problems == []
    assert 0 < len(ts.rows) <= 300 and len(ts.rows) == stats["heldout"]["rows"]
    assert len({r.id for r in ts.rows}) == len(ts.rows)
    assert all(r.gold["icd10gm"][:3] in held for r in ts.rows)
    tumor = [r for r in ts.rows if r.is_tumor]
    assert len(tumor) >= len(ts.rows) // 2
    assert any(r.gold["icdo_topography"] for r in tumor)
    for r in ts.rows:
        siblings = {normalize_text(i.title) for c, i in cat.codes["icd10gm"].items()
                    if i.category == r.gold["icd10gm"][:3] and c != r.gold["icd10gm"]}
        assert normalize_text(r.text) not in siblings


def test_dataset_card_and_stats(small, cat):
    out, stats, _ = small
    card = (out / "README.md").read_text(encoding="utf-8")
    on_disk = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert on_disk["plain"] == stats["plain"] and on_disk["generator_version"] == data.GENERATOR_VERSION == "1"
    for name, meta in cat.sources.items():
        assert meta["sha256"] in card
    for needle in ("Per task", "Per source catalogue", "Per ICD-10-GM chapter", "Per template index",
                   "Abbreviated variants", "Excluded (leakage) pairs", "Held-out 3-character categories",
                   "peak memory", f"seed {stats['seed']}"):
        assert needle in card, needle
    assert sum(stats["plain"]["by_task"].values()) == stats["files"]["plain.jsonl"] == SMALL_LIMIT
    assert not (out / "rag.jsonl").exists()


# ------------------------------------------------------------------------------------------ refusals, CLI helpers

def test_refusals(tmp_path, cat):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        build_dataset(DataConfig(out=busy, limit=10, rag=False), catalogue=cat, progress=False)
    assert (busy / "keep.txt").read_text() == "x"
    for bad in (0, -5):
        with pytest.raises(UserError, match="--limit"):
            build_dataset(DataConfig(out=tmp_path / "x", limit=bad, rag=False), catalogue=cat, progress=False)
    with pytest.raises(UserError, match="--tasks is empty"):
        build_dataset(DataConfig(out=tmp_path / "x", tasks=(), rag=False), catalogue=cat, progress=False)
    with pytest.raises(UserError, match="Unknown task 'icd9'"):
        build_dataset(DataConfig(out=tmp_path / "x", tasks=("icd10gm", "icd9"), rag=False), catalogue=cat,
                      progress=False)
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(DataConfig(out=tmp_path / "x", limit=10, rag=False, exclude=(tmp_path / "none.jsonl",)),
                      catalogue=cat, progress=False)
    assert not (tmp_path / "x").exists()
    stats = build_dataset(DataConfig(out=busy, limit=10, rag=False, force=True, tasks=("icdo_morphology",)),
                          catalogue=cat, progress=False)
    assert stats["files"]["plain.jsonl"] == 10 and len(read_jsonl(busy / "plain.jsonl")) == 10


def test_missing_catalogue_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_catalogue(files={"icdo3": tmp_path / "missing.xml.gz"})


def test_cli_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("ONCOCODER_CACHE", str(tmp_path))
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    cfg = data.from_args(parser.parse_args([]))
    assert cfg == DataConfig(out=tmp_path / "data" / "v1")
    cfg = data.from_args(parser.parse_args(["--out", "o", "--limit", "5", "--tasks", "icd10gm", "title",
                                            "--exclude", "a.jsonl", "b.csv", "--seed", "3", "--no-rag", "--force"]))
    assert cfg == DataConfig(out=Path("o"), limit=5, tasks=("icd10gm", "title"),
                             exclude=(Path("a.jsonl"), Path("b.csv")), seed=3, rag=False, force=True)


# ------------------------------------------------------------------------------------------ RAG format

def test_rag_answer_points_at_gold_option_stub(stub_rag, cat):
    out, stats, lines = stub_rag
    assert len(lines) == 120
    for line in lines:
        check_rag_line(line, cat)
    by_task = Counter(line["task"] for line in lines)
    assert by_task["is_tumor"] == 18  # 15 %
    assert by_task["icd10gm"] == 54
    assert any(line["code"] is None for line in lines if line["task"] == "icdo_morphology")  # `keine`
    assert sum(1 for line in lines if line["task"] == "icd10gm" and line["system"] == "icd10gm"
               and line["code"][0] in "CD" and line["code"] < "D49") >= 20  # tumor-weighted
    # the stub misses every odd-length text: half the misses are injected, the others dropped
    missed = [line for line in lines if line["gold_retrieved"] is False]
    assert missed and stats["rag"]["gold_injected"] == len(missed)
    assert sum(v for k, v in stats["rag"]["retrieval"].items() if k.endswith(":dropped")) > 0
    positions = Counter(line["gold_position"] for line in lines if line["task"] == "icd10gm")
    assert len(positions) >= 6  # shuffled: the gold is not always first


def test_rag_options_never_show_heldout_codes(stub_rag):
    _, stats, lines = stub_rag
    held = set(stats["heldout"]["categories"])  # ICD-10-GM categories (ICD-O-3 topography is another catalogue)
    assert "A01" in held or "A04" in held  # the stub's distractors start at A00: held-out ones must be replaced
    for line in lines:
        if line["task"] != "icd10gm":
            continue
        _, options = parse(line)
        for _, shown in options or []:
            assert option_code(shown)[:3] not in held


def test_rag_is_deterministic_for_a_seed(tmp_path, cat):
    def build(name):
        cfg = DataConfig(out=tmp_path / name, limit=60, rag_size=40, tasks=("icdo_morphology", "icdo_topography"))
        build_dataset(cfg, catalogue=cat, retriever=StubRetriever(cat), progress=False)
        return (tmp_path / name / "rag.jsonl").read_bytes()

    assert build("a") == build("b")


@pytest.mark.slow
def test_rag_with_the_real_index(tmp_path, cat):
    from oncocoder.index.retrieve import Retriever

    retriever = Retriever(catalogue=cat)
    cfg = DataConfig(out=tmp_path / "rag", limit=200, rag_size=40)
    stats = build_dataset(cfg, catalogue=cat, retriever=retriever, progress=False)
    lines = read_jsonl(tmp_path / "rag" / "rag.jsonl")
    assert len(lines) == 40
    for line in lines:
        check_rag_line(line, cat)
    assert stats["rag"]["gold_retrieved"] >= 0.7 * sum(1 for line in lines if line["task"] != "is_tumor")
    # the batched helper returns what Retriever.search returns
    texts = ["Mammakarzinom", "Adenokarzinom des Colon sigmoideum", "Akute myeloische Leukämie"]
    for system, k in CoderConfig().k.items():
        batched = data.batched_search(retriever, texts, system, k)
        single = [retriever.search(t, k, systems=[system])[system] for t in texts]
        assert [c[0].code for c in batched] == [c[0].code for c in single]
        assert [len(c) for c in batched] == [k] * len(texts)
