"""The mode comparison (eval/run.py) and its reports (eval/report.py).

Fast tests run the real Coder in `retrieval` mode (and, for the LLM modes, with the model call replaced) over a
stub retriever whose candidate lists are written out below, so every number is computed by hand from this file.
The real catalogue validates every code. The slow test runs the real retriever and a tiny LLM on three rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from oncocoder import config
from oncocoder.agent.coder import MODES, CodeResult, Coder, CoderConfig, Prediction
from oncocoder.errors import UserError
from oncocoder.eval import stats
from oncocoder.eval.run import (EvalConfig, add_arguments, from_args, read_predictions, run_eval,
                                score_predictions)
from oncocoder.eval import testset as T  # (not `import TestSet`: pytest would try to collect it)
from oncocoder.eval.testset import DEV_SET, load_testset
from oncocoder.index.retrieve import Candidate

# Invented texts (not from the dev set). Row 3's ICD-10-GM gold is deliberately wrong (but valid); row 5's is the
# non-codable category C34 (reported, not scored); rows 4 and 6 are not tumors (null ICD-O-3 gold).
ROWS = [
    {"id": "r1", "text": "Mammakarzinom links oben außen", "icd10gm": "C50.4", "icdo_topography": "C50.4",
     "icdo_morphology": "8500/3", "is_tumor": True, "derivable": "full"},
    {"id": "r2", "text": "Adenokarzinom des Colon sigmoideum", "icd10gm": "C18.7", "icdo_topography": "C18.7",
     "icdo_morphology": "8140/3", "is_tumor": True, "derivable": "full"},
    {"id": "r3", "text": "Prostatakarzinom", "icd10gm": "C34.1", "icdo_topography": "C61.9",
     "icdo_morphology": None, "is_tumor": True, "derivable": "partial"},
    {"id": "r4", "text": "Diabetes mellitus Typ 2", "icd10gm": "E11.90", "icdo_topography": None,
     "icdo_morphology": None, "is_tumor": False, "derivable": "full"},
    {"id": "r5", "text": "Plattenepithelkarzinom Oberlappen rechte Lunge", "icd10gm": "C34",
     "icdo_topography": "C34.1", "icdo_morphology": "8070/3", "is_tumor": True, "derivable": "full"},
    {"id": "r6", "text": "Verdacht auf Pneumonie", "icd10gm": "J18.9", "icdo_topography": None,
     "icdo_morphology": None, "is_tumor": False, "derivable": "full"},
]

# The stub retriever's candidates, best first.
CANDIDATES = {
    "Mammakarzinom links oben außen": {"icd10gm": ["C50.4", "C50.8", "C50.9"],
                                       "icdo_topography": ["C50.4", "C50.9"],
                                       "icdo_morphology": ["8500/3", "8140/3"]},
    "Adenokarzinom des Colon sigmoideum": {"icd10gm": ["C18.9", "C18.7", "C18.8"],
                                           "icdo_topography": ["C18.9", "C18.7"],
                                           "icdo_morphology": ["8140/2", "8140/3"]},
    "Prostatakarzinom": {"icd10gm": ["C61", "C67.9", "C62.9"], "icdo_topography": ["C61.9"],
                         "icdo_morphology": ["8140/3"]},
    "Diabetes mellitus Typ 2": {"icd10gm": ["E11.90"], "icdo_topography": ["C34.9"],
                                "icdo_morphology": ["8140/3"]},
    "Plattenepithelkarzinom Oberlappen rechte Lunge": {"icd10gm": ["C34.1"], "icdo_topography": ["C34.1"],
                                                       "icdo_morphology": ["8071/3", "8070/3"]},
    "Verdacht auf Pneumonie": {"icd10gm": ["C34.9", "J18.9"], "icdo_topography": ["C34.9"],
                               "icdo_morphology": ["8140/3"]},
}

TARGET_KEYS = {"n", "exact", "ci_low", "ci_high", "partial", "malformed", "n_malformed", "ece"}
COMPARISON_KEYS = {"diff", "ci_low", "ci_high", "n", "p_value", "b01", "b10"}


class StubRetriever:
    """The retriever interface over the fixed candidate lists above (real catalogue titles)."""

    def __init__(self, catalogue):
        self.catalogue = catalogue

    def search(self, text, k=10, systems=None):
        table = CANDIDATES[text]
        return {s: [Candidate(c, self.catalogue.title(c, s), self.catalogue.title(c, s), round(1.0 / (i + 1), 6))
                    for i, c in enumerate(table[s][:k])] for s in (systems or config.SYSTEMS)}


class CountingCoder(Coder):
    """Counts the texts it codes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.coded: list[str] = []

    def code_batch(self, rows, mode=None, progress=None):
        self.coded += [r["text"] for r in rows]
        return super().code_batch(rows, mode=mode, progress=progress)


class FakeLLMCoder(CountingCoder):
    """The LLM modes without a model: the answer is the top candidate (no model is loaded)."""

    def llm_for(self, mode):
        return None

    def _with_llm(self, jobs, mode):
        for job in jobs:
            self._from_retrieval(job)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def testset_path(tmp_path):
    return write_jsonl(tmp_path / "constructed.jsonl", ROWS)


@pytest.fixture
def coder(catalogue):
    return CountingCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))


def run(path, out, coder, **kw):
    kw.setdefault("modes", ("retrieval",))
    kw.setdefault("n_boot", 200)
    return run_eval(EvalConfig(testsets=(path,), out=out, **kw), coder=coder, progress=False)


def approx(x):
    return pytest.approx(x, abs=1e-9)


# ----------------------------------------------------------------------------------------- retrieval end to end

def test_retrieval_numbers_equal_hand_computed_values(testset_path, tmp_path, coder):
    out = tmp_path / "out"
    m = run(testset_path, out, coder)
    assert m == json.loads((out / "metrics.json").read_text())
    r = m["modes"]["retrieval"]
    assert r["n_rows"] == 6 and r["errors"] == 0
    # ICD-10-GM: r1-r4 and r6 scored (r5's gold C34 is invalid); right: r1, r4; same category: r1, r2, r4
    assert (r["icd10gm"]["n"], r["icd10gm"]["exact"], r["icd10gm"]["partial"]) == (5, approx(0.4), approx(0.6))
    # topography: r1, r2, r3, r5 scored (null gold elsewhere); r2 predicted C18.9 for C18.7
    assert (r["icdo_topography"]["n"], r["icdo_topography"]["exact"]) == (4, approx(0.75))
    assert r["icdo_topography"]["partial"] == approx(1.0)
    # morphology: r1, r2, r5 scored; r2 8140/2 (same four digits), r5 8071/3 (not)
    assert (r["icdo_morphology"]["n"], r["icdo_morphology"]["exact"]) == (3, approx(1 / 3))
    assert r["icdo_morphology"]["partial"] == approx(2 / 3)
    for s in config.SYSTEMS:
        assert r[s]["malformed"] == 0 and r[s]["n_malformed"] == 0
        assert r[s]["ci_low"] <= r[s]["exact"] <= r[s]["ci_high"]
    # tumor: r6's top candidate C34.9 says tumor
    assert (r["is_tumor"]["n"], r["is_tumor"]["accuracy"]) == (6, approx(5 / 6))
    # derivable == full: r1, r2, r4, r6 for ICD-10-GM (r3 is partial, r5 not scored)
    assert r["full_only"]["icd10gm"] == {"exact": approx(0.5), "n": 4}
    assert r["full_only"]["icdo_topography"] == {"exact": approx(2 / 3), "n": 3}
    assert r["full_only"]["is_tumor"] == {"accuracy": approx(0.8), "n": 5}
    # recall from the candidate lists
    rec = m["retrieval"]
    assert rec["source_mode"] == "retrieval"
    assert rec["icd10gm"]["n"] == 5
    assert [rec["icd10gm"][f"recall@{k}"] for k in (1, 5, 10)] == [approx(0.4), approx(0.8), approx(0.8)]
    assert [rec["icd10gm"][f"partial_recall@{k}"] for k in (1, 5)] == [approx(0.6), approx(0.8)]
    assert [rec["icdo_topography"][f"recall@{k}"] for k in (1, 5)] == [approx(0.75), approx(1.0)]
    assert [rec["icdo_morphology"][f"recall@{k}"] for k in (1, 5)] == [approx(1 / 3), approx(1.0)]
    assert rec["icdo_morphology"]["partial_recall@1"] == approx(2 / 3)
    # per chapter (of the gold code) and confusions
    assert m["per_chapter"]["retrieval"] == {"02": {"exact": approx(1 / 3), "n": 3}, "04": {"exact": 1.0, "n": 1},
                                             "10": {"exact": 0.0, "n": 1}}
    conf = m["confusions"]["retrieval"]
    assert [(c["gold"], c["predicted"], c["count"]) for c in conf] == [("C18.7", "C18.9", 1), ("C34.1", "C61", 1),
                                                                       ("J18.9", "C34.9", 1)]
    assert conf[1]["examples"] == ["Prostatakarzinom"]
    # the invalid gold row is reported
    problems = m["run"]["testset"]["problems"]
    assert len(problems) == 1 and "C34" in problems[0] and "id r5" in problems[0]
    # predictions: one line per row, in row order
    preds = read_predictions(out / "predictions.retrieval.jsonl")
    assert [p.id for p in preds] == [r["id"] for r in ROWS]


def test_metrics_json_has_the_documented_keys(testset_path, tmp_path, catalogue):
    out = tmp_path / "out"
    coder = FakeLLMCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    m = run(testset_path, out, coder, modes=("retrieval", "rag", "thinking"), limit_thinking=2)
    text = (out / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))  # strict JSON
    assert m["schema_version"] == 1 and m["testset"] == "constructed"
    assert set(m) == {"schema_version", "testset", "modes", "retrieval", "comparisons", "coverage", "per_chapter",
                      "confusions", "run"}
    for mode in ("retrieval", "rag", "thinking"):
        e = m["modes"][mode]
        for s in config.SYSTEMS:
            assert set(e[s]) == TARGET_KEYS
            assert set(e["full_only"][s]) == {"exact", "n"}
        assert set(e["is_tumor"]) == {"accuracy", "n", "ci_low", "ci_high"}
        assert set(e["latency_ms"]) == {"p50", "p95", "mean", "n"}
        assert e["texts_per_second"] > 0
        assert set(m["coverage"][mode]) == {"coverage_at_95", "n", "curve"}
    for s in config.SYSTEMS:
        assert {f"recall@{k}" for k in (1, 5, 10)} | {f"partial_recall@{k}" for k in (1, 5, 10)} | {"n"} \
            == set(m["retrieval"][s])
    assert set(m["comparisons"]) == {"thinking_vs_rag"}
    for s in config.SYSTEMS:
        assert set(m["comparisons"]["thinking_vs_rag"][s]) == COMPARISON_KEYS
    run_ = m["run"]
    for key in ("date", "testset", "modes", "rows", "limit", "limit_thinking", "models", "adapters",
                "oncocoder_version", "machine", "n_boot", "seed"):
        assert key in run_
    assert set(run_["testset"]) == {"name", "path", "sha256", "rows", "problems"}
    assert len(run_["testset"]["sha256"]) == 64
    assert {"platform", "cpu_count", "torch_device"} <= set(run_["machine"])
    assert run_["limit_thinking"] == 2 and run_["rows"] == {"retrieval": 6, "rag": 6, "thinking": 2}


def test_thinking_rows_are_limited_and_paired(testset_path, tmp_path, catalogue):
    out = tmp_path / "out"
    coder = FakeLLMCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    m = run(testset_path, out, coder, modes=("retrieval", "rag", "thinking"), limit_thinking=2)
    assert len(read_predictions(out / "predictions.thinking.jsonl")) == 2
    assert m["modes"]["thinking"]["n_rows"] == 2
    assert m["modes"]["thinking"]["icd10gm"]["n"] == 2  # r1 and r2 have ICD-10-GM gold
    cmp_ = m["comparisons"]["thinking_vs_rag"]
    assert cmp_["icd10gm"]["n"] == 2 and cmp_["icdo_topography"]["n"] == 2
    # same answers on the same two rows: no difference
    assert cmp_["icd10gm"]["diff"] == 0 and (cmp_["icd10gm"]["b01"], cmp_["icd10gm"]["b10"]) == (0, 0)
    assert "first 2 rows" in (out / "report.md").read_text()


def test_reports_and_plots_are_written(testset_path, tmp_path, catalogue):
    out = tmp_path / "out"
    coder = FakeLLMCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    run(testset_path, out, coder, modes=("retrieval", "rag", "thinking"), limit_thinking=3)
    for name in ("accuracy.png", "accuracy_vs_latency.png", "coverage.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert report.startswith("# oncocoder evaluation: constructed")
    assert "modes.<mode>.<target>.exact" in report  # the schema at the top
    assert "| retrieval | 6 | 40.0 (" in report  # ICD-10-GM exact of the main table
    assert "thinking − rag" in report and "McNemar" in report
    assert "C34 is not a codable icd10gm code" in report  # the test set problem
    assert "All numbers in this report come from this run" in report
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and rows[0]["mode"] == "retrieval" and rows[0]["target"] == "icd10gm"
    assert float(rows[0]["exact"]) == approx(0.4)


def test_several_testsets_go_to_subfolders(testset_path, tmp_path, coder):
    second = tmp_path / "second.csv"
    with open(second, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        for r in ROWS[:2]:
            w.writerow({k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in r.items()})
    out = tmp_path / "out"
    result = run_eval(EvalConfig(testsets=(testset_path, second), modes=("retrieval",), out=out, n_boot=100),
                      coder=coder, progress=False)
    assert set(result) == {"constructed", "second"}
    assert result["second"]["modes"]["retrieval"]["icd10gm"]["n"] == 2
    assert result["second"]["modes"]["retrieval"]["icd10gm"]["exact"] == approx(0.5)
    for name in ("constructed", "second"):
        assert (out / name / "metrics.json").exists() and (out / name / "report.md").stat().st_size > 0


# ----------------------------------------------------------------------------------------- resume and failures

def test_resume_recomputes_only_missing_rows(testset_path, tmp_path, catalogue):
    out = tmp_path / "out"
    first = CountingCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    m1 = run(testset_path, out, first)
    assert len(first.coded) == 6
    path = out / "predictions.retrieval.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:len(lines[2]) // 2], encoding="utf-8")

    second = CountingCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    m2 = run(testset_path, out, second)
    assert second.coded == [r["text"] for r in ROWS[2:]]
    after = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert after[:2] == lines[:2]  # kept rows untouched
    strip = [json.loads(line) | {"latency_ms": None} for line in after]
    assert strip == [json.loads(line) | {"latency_ms": None} for line in lines]
    assert m2["run"]["reused"] == {"retrieval": 2}
    assert m2["modes"]["retrieval"]["icd10gm"] == m1["modes"]["retrieval"]["icd10gm"]

    third = CountingCoder(CoderConfig(mode="retrieval"), retriever=StubRetriever(catalogue))
    run(testset_path, out, third, resume=False)
    assert len(third.coded) == 6


def test_resume_ignores_predictions_of_another_model(testset_path, tmp_path, catalogue):
    out = tmp_path / "out"
    a = FakeLLMCoder(CoderConfig(mode="rag", base_model="model-a"), retriever=StubRetriever(catalogue))
    run(testset_path, out, a, modes=("rag",))
    b = FakeLLMCoder(CoderConfig(mode="rag", base_model="model-b"), retriever=StubRetriever(catalogue))
    run(testset_path, out, b, modes=("rag",))
    assert len(b.coded) == 6
    assert {p.model for p in read_predictions(out / "predictions.rag.jsonl")} == {"model-b"}


def test_row_failure_is_recorded_and_scored_as_wrong(testset_path, tmp_path, coder, monkeypatch):
    original = Coder._from_retrieval

    def failing(self, job):
        if job.text == ROWS[0]["text"]:
            raise RuntimeError("simulated model failure")
        return original(self, job)

    monkeypatch.setattr(Coder, "_from_retrieval", failing)
    out = tmp_path / "out"
    m = run(testset_path, out, coder)
    preds = read_predictions(out / "predictions.retrieval.jsonl")
    assert len(preds) == 6 and "RuntimeError" in preds[0].error and preds[0].icd10gm is None
    assert all(p.error is None for p in preds[1:])
    r = m["modes"]["retrieval"]
    assert r["errors"] == 1
    # r1 was right before; now it is scored as wrong, not skipped
    assert (r["icd10gm"]["n"], r["icd10gm"]["exact"]) == (5, approx(0.2))
    assert (r["icdo_topography"]["n"], r["icdo_topography"]["exact"]) == (4, approx(0.5))
    assert (r["is_tumor"]["n"], r["is_tumor"]["accuracy"]) == (6, approx(4 / 6))
    assert r["icd10gm"]["malformed"] == 0
    assert m["confusions"]["retrieval"][0]["gold"] == "C18.7"
    assert ("C50.4", None, 1) in [(c["gold"], c["predicted"], c["count"]) for c in m["confusions"]["retrieval"]]


# ----------------------------------------------------------------------------------------- pure scoring

def constructed_set(n, gold="C50.9"):
    rows = [T.TestRow(id=f"t{i}", text=f"Mammakarzinom Fall {i}",
                    gold={"icd10gm": gold, "icdo_topography": None, "icdo_morphology": None}, is_tumor=True)
            for i in range(n)]
    return T.TestSet(path=Path("constructed.jsonl"), rows=rows, sha256="0" * 64)


def preds(mode, codes, conf=None):
    out = []
    for i, code in enumerate(codes):
        c = CodeResult(code=code, title="", confidence=(conf[i] if conf else 0.5))
        out.append(Prediction(id=f"t{i}", mode=mode, icd10gm=c, is_tumor=True, latency_ms=10.0))
    return out


def test_comparison_diff_and_mcnemar(catalogue):
    ts = constructed_set(10)
    R, W = "C50.9", "C50.8"
    a = [R, R, R, R, R, R, R, R, W, W]  # rag+ft: 8 right
    b = [R, R, R, W, W, W, W, W, R, W]  # ft: 4 right; a right & b wrong on 5 rows, a wrong & b right on 1
    m = score_predictions(ts, {"rag+ft": preds("rag+ft", a), "ft": preds("ft", b)}, catalogue, n_boot=500, seed=3)
    assert set(m["comparisons"]) == {"rag+ft_vs_ft"}
    c = m["comparisons"]["rag+ft_vs_ft"]["icd10gm"]
    assert (c["n"], c["b01"], c["b10"]) == (10, 1, 5)
    assert c["diff"] == approx(0.4)
    assert c["p_value"] == approx(14 / 64)  # two-sided exact binomial: 2 * P(X >= 5 | 6, 0.5)
    ref = stats.paired_bootstrap_diff([1] * 8 + [0] * 2, [1, 1, 1, 0, 0, 0, 0, 0, 1, 0], n_boot=500, seed=3)
    assert (c["ci_low"], c["ci_high"]) == (approx(ref["ci_low"]), approx(ref["ci_high"]))
    assert c["ci_low"] < 0.4 < c["ci_high"]
    assert m["comparisons"]["rag+ft_vs_ft"]["icdo_topography"]["n"] == 0  # no gold: nothing paired
    assert m["modes"]["rag+ft"]["icd10gm"]["exact"] == approx(0.8)
    assert m["modes"]["ft"]["icd10gm"]["exact"] == approx(0.4)


def test_comparison_pairs_a_limited_mode_by_row_id(catalogue):
    ts = constructed_set(6)
    R, W = "C50.9", "C50.8"
    rag = preds("rag", [R, R, W, R, R, R])
    thinking = preds("thinking", [R, R, R])  # the first 3 rows only
    m = score_predictions(ts, {"rag": rag, "thinking": list(reversed(thinking))}, catalogue, n_boot=200)
    c = m["comparisons"]["thinking_vs_rag"]["icd10gm"]
    # paired on t0-t2: thinking 3/3, rag 2/3 (unpaired it would be 1 - 5/6)
    assert c["n"] == 3 and c["diff"] == approx(1 / 3) and (c["b01"], c["b10"]) == (0, 1)
    assert c["p_value"] == approx(1.0)
    assert m["modes"]["thinking"]["n_rows"] == 3 and m["modes"]["thinking"]["icd10gm"]["n"] == 3


def test_calibration_coverage_and_malformed(catalogue):
    ts = constructed_set(5)
    codes = ["C50.9", "C50.8", "C50.8", "C50.8", "C50"]  # C50 is a category, not a codable code
    conf = [0.9, 0.9, 0.3, 0.3, 0.3]
    m = score_predictions(ts, {"rag+ft": preds("rag+ft", codes, conf)}, catalogue, n_boot=100)
    e = m["modes"]["rag+ft"]["icd10gm"]
    # bins: 0.9 -> 1 of 2 right, gap 0.4; 0.3 -> 0 of 3 right, gap 0.3; ECE = 2/5 * 0.4 + 3/5 * 0.3
    assert e["ece"] == approx(0.34)
    assert e["exact"] == approx(0.2) and (e["malformed"], e["n_malformed"]) == (approx(0.2), 1)
    assert m["coverage"]["rag+ft"]["coverage_at_95"] == approx(0.2)  # only the top row is >= 95 % right
    assert m["coverage"]["rag+ft"]["curve"]["accuracy"][:2] == [1.0, 0.5]
    assert m["modes"]["rag+ft"]["full_only"] is None  # no derivable field


# ----------------------------------------------------------------------------------------- bad input and CLI

def test_bad_input_is_a_user_error(testset_path, tmp_path, coder):
    with pytest.raises(UserError, match="Unknown mode 'bogus'"):
        run(testset_path, tmp_path / "o", coder, modes=("retrieval", "bogus"))
    with pytest.raises(UserError, match="does not exist"):
        run(tmp_path / "missing.jsonl", tmp_path / "o", coder)
    dup = write_jsonl(tmp_path / "dup.jsonl", [ROWS[0], ROWS[1], dict(ROWS[2], id="r1")])
    with pytest.raises(UserError, match="twice"):
        run(dup, tmp_path / "o", coder)
    lacking = write_jsonl(tmp_path / "lacking.jsonl", [{k: v for k, v in r.items() if k != "is_tumor"} for r in ROWS])
    with pytest.raises(UserError, match="is_tumor"):
        run(lacking, tmp_path / "o", coder)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        run(empty, tmp_path / "o", coder)
    with pytest.raises(UserError, match="--limit"):
        run(testset_path, tmp_path / "o", coder, limit=0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run(testset_path, afile, coder)
    no_adapter = Coder(CoderConfig(mode="ft", adapters={"ft": str(tmp_path / "no-adapter")}),
                       retriever=StubRetriever(coder.catalogue))
    with pytest.raises(UserError, match="--ft-adapter"):
        run(testset_path, tmp_path / "o", no_adapter, modes=("retrieval", "ft"))
    assert coder.coded == []  # nothing was coded before the errors
    assert not (tmp_path / "o" / "predictions.retrieval.jsonl").exists()


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv))


def test_cli_flags_map_onto_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ONCOCODER_CACHE", str(tmp_path / "cache"))
    cfg = parse(["--testset", "a.jsonl", "--testset", "b.csv", "--modes", "retrieval, rag+ft", "--out", "o",
                 "--ft-adapter", "ftdir", "--rag-adapter", "ragdir", "--limit", "7", "--limit-thinking", "3",
                 "--no-resume", "--n-boot", "50", "--base-model", "some/model"])
    assert [p.name for p in cfg.testsets] == ["a.jsonl", "b.csv"]
    assert cfg.modes == ("retrieval", "rag+ft") and str(cfg.out) == "o"
    assert cfg.adapters == {"ft": "ftdir", "rag-ft": "ragdir"}
    assert (cfg.limit, cfg.limit_thinking, cfg.resume, cfg.n_boot, cfg.base_model) == (7, 3, False, 50, "some/model")
    plain = parse([])
    assert plain.testsets == (DEV_SET,) and plain.modes == MODES and plain.resume and plain.limit_thinking is None
    with pytest.raises(UserError, match="Unknown mode 'bogus'"):
        parse(["--modes", "retrieval,bogus"])
    with pytest.raises(UserError, match="--modes is empty"):
        parse(["--modes", ","])


def test_preset_default(tmp_path, monkeypatch):
    from oncocoder.eval import run

    cfg = parse(["--preset", "default"])
    assert cfg.testsets == (DEV_SET, run.HELDOUT_SET) and cfg.modes == MODES and cfg.limit_thinking == 10
    assert cfg.notes == ()
    assert len(load_testset(run.HELDOUT_SET).rows) == 300  # the shipped held-out split loads cleanly
    monkeypatch.setattr(run, "HELDOUT_SET", tmp_path / "missing.jsonl")
    cfg = parse(["--preset", "default", "--limit-thinking", "4"])
    assert cfg.testsets == (DEV_SET,) and cfg.limit_thinking == 4
    assert len(cfg.notes) == 1 and "oncocoder data build" in cfg.notes[0] and "missing.jsonl" in cfg.notes[0]


def test_dev_set_loads(catalogue):
    ts = load_testset(DEV_SET, catalogue)
    assert len(ts.rows) > 0 and len({r.id for r in ts.rows}) == len(ts.rows)


# ----------------------------------------------------------------------------------------- slow: real models

@pytest.mark.slow
def test_real_retriever_and_tiny_llm(testset_path, tmp_path, retriever, tiny_model):
    coder = Coder(CoderConfig(mode="rag", base_model=tiny_model, batch_size=2), retriever=retriever)
    out = tmp_path / "out"
    m = run(testset_path, out, coder, modes=("retrieval", "rag"), limit=3)
    for mode in ("retrieval", "rag"):
        preds_ = read_predictions(out / f"predictions.{mode}.jsonl")
        assert [p.id for p in preds_] == ["r1", "r2", "r3"] and all(p.error is None for p in preds_)
        gold = [r["icd10gm"] for r in ROWS[:3]]
        assert m["modes"][mode]["icd10gm"]["exact"] == approx(
            sum(p.icd10gm.code == g for p, g in zip(preds_, gold)) / 3)
        for s in config.SYSTEMS:
            assert m["modes"][mode][s]["malformed"] == 0
    for p in read_predictions(out / "predictions.rag.jsonl"):  # RAG answers are among the candidates shown
        assert p.icd10gm.code in [c["code"] for c in p.candidates["icd10gm"]]
    assert m["run"]["models"]["base_model"] == tiny_model
    assert m["run"]["models"]["embedding_model"] == config.DEFAULT_EMBEDDING_MODEL
    assert m["modes"]["rag"]["latency_ms"]["p50"] > 0 and not math.isnan(m["modes"]["rag"]["latency_ms"]["p50"])
