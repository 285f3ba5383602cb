"""The mode comparison: code every test row in every mode, score it, and write metrics, report and plots.

    run_eval(EvalConfig(testsets=(DEV_SET,), modes=("retrieval", "rag+ft")))   # -> the metrics dict

For each test set and mode the predictions go to `predictions.<mode>.jsonl` in the output folder (one `Prediction`
per row, in row order, flushed row by row), so an interrupted run resumes where it stopped: rows that already have
a prediction line (same id, text, mode, model and adapter) are not coded again, and a truncated last line is
dropped and coded again. A model failure on one row is recorded in that row's `error` and scored as wrong.
The `thinking` mode codes only the first `limit_thinking` rows; every comparison with it pairs rows by id, so it
uses exactly those rows. Scoring is a pure function of the test set and the predictions (`score_predictions`).

Output folder (one subfolder per test set, named after it, when there are several):
`metrics.json`, `metrics.csv` (one row per mode x target), `report.md`, `accuracy.png`,
`accuracy_vs_latency.png`, `coverage.png`, `predictions.<mode>.jsonl`.

metrics.json (schema_version 1; a value that is undefined, e.g. an accuracy over no row, is null)
-----------------------------------------------------------------------------------------------
Targets are `icd10gm`, `icdo_topography`, `icdo_morphology`; accuracies and rates are fractions in [0, 1];
every CI is a 95 % percentile bootstrap interval (`n_boot` resamples, `seed`).

    schema_version                       1
    testset                              name of the test set (file stem)
    modes.<mode>.n_rows                  rows the mode coded (thinking: the first limit_thinking rows)
    modes.<mode>.errors                  rows whose prediction records an error (scored as wrong)
    modes.<mode>.<target>.n              rows scored: coded by the mode and with a valid gold code for the target
    modes.<mode>.<target>.exact          exact-match accuracy over those rows
    modes.<mode>.<target>.ci_low|ci_high CI of exact
    modes.<mode>.<target>.partial        same first three characters (morphology: first four digits)
    modes.<mode>.<target>.malformed      share of the mode's coded rows whose code for the target is given but not
                                         a valid codable catalogue code (0 by construction for every mode)
    modes.<mode>.<target>.n_malformed    their count
    modes.<mode>.<target>.ece            expected calibration error (10 bins) of the code's confidence against
                                         exact correctness; a missing code (no answer, error) has confidence 0
    modes.<mode>.is_tumor.accuracy|n|ci_low|ci_high   tumor recognition on rows with a gold is_tumor
    modes.<mode>.latency_ms.p50|p95|mean|n            time per text (batched rows share the batch time)
    modes.<mode>.texts_per_second        1000 / mean latency
    modes.<mode>.full_only               null when the set has no `derivable` field, else the rows with
                                         derivable == "full": full_only.<target>.exact|n, full_only.is_tumor.accuracy|n
    retrieval.source_mode                mode whose candidate lists were used (all modes share the retriever)
    retrieval.<target>.n                 rows with a gold code and a candidate list
    retrieval.<target>.recall@<k>        gold code among the first k candidates (the ceiling of the RAG modes)
    retrieval.<target>.partial_recall@<k>  gold partial key among the first k candidates
    comparisons.<a>_vs_<b>.<target>.diff|ci_low|ci_high|n   exact(a) - exact(b) on the n rows both modes coded
                                         (with gold), paired bootstrap CI
    comparisons.<a>_vs_<b>.<target>.p_value|b01|b10         exact two-sided McNemar test; b01: a wrong and b
                                         right, b10: a right and b wrong
        pairs, where both modes ran: rag+ft_vs_ft, rag+ft_vs_rag, rag_vs_base, rag+ft_vs_retrieval, thinking_vs_rag
    coverage.<mode>.coverage_at_95       largest share of the most confident rows (ICD-10-GM confidence) whose
                                         exact accuracy is >= 95 % (0.0 if none)
    coverage.<mode>.n|curve.coverage|curve.accuracy   the accuracy-coverage curve (ICD-10-GM)
    per_chapter.<mode>.<chapter>.exact|n ICD-10-GM exact accuracy by the chapter of the gold code ("02" = C00-D48)
    confusions.<mode>                    the 20 most frequent ICD-10-GM confusions: [{gold, predicted (null: no
                                         code), count, examples (up to 3 texts)}]
    run                                  date, testset {name, path, sha256, rows, problems}, modes, rows per mode,
                                         reused (rows taken from an earlier run), limit, limit_thinking, ks, n_boot,
                                         seed, models {base_model, embedding_model, index}, adapters
                                         {mode: {path, manifest_sha256, base_model}}, oncocoder_version,
                                         machine {platform, python, cpu_count, torch_device, gpu}, notes
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oncocoder import __version__, config
from oncocoder.agent.coder import ADAPTER_MODES, MODES, Coder, CoderConfig, Prediction, check_mode
from oncocoder.errors import UserError
from oncocoder.eval import metrics as M
from oncocoder.eval import stats
from oncocoder.eval.testset import DEV_SET, TestSet, load_testset
from oncocoder.files import sha256_file

SCHEMA_VERSION = 1
TARGETS = config.SYSTEMS
# (a, b): a - b, in this order; each one is computed when both modes ran
COMPARISONS = (("rag+ft", "ft"), ("rag+ft", "rag"), ("rag", "base"), ("rag+ft", "retrieval"), ("thinking", "rag"))
COVERAGE_TARGET = 0.95
N_CONFUSIONS = 20
N_EXAMPLES = 3


HELDOUT_SET = Path(__file__).resolve().parent / "data" / "heldout_catalogue.jsonl"


def heldout_path() -> Path:
    """The held-out catalogue split shipped with the package: `heldout.jsonl` of `oncocoder data build` (seed 13),
    the build the shipped adapters were trained on, so none of its categories was seen in training."""
    return HELDOUT_SET


def _default_adapters() -> dict[str, str]:
    return dict(CoderConfig().adapters)


@dataclass
class EvalConfig:
    testsets: tuple[Path | str, ...] = (DEV_SET,)
    modes: tuple[str, ...] = MODES
    out: Path | str | None = None  # None: <cache>/eval/<timestamp>
    base_model: str = config.DEFAULT_BASE_MODEL
    adapters: dict[str, str] = field(default_factory=_default_adapters)  # adapter name (ft, rag-ft) -> folder
    limit: int | None = None  # first N rows of each test set
    limit_thinking: int | None = None  # thinking mode: first N rows (None: all rows)
    ks: tuple[int, ...] = (1, 5, 10)
    n_boot: int = 2000
    seed: int = 0
    resume: bool = True
    device: str | None = None  # None: cuda when available
    batch_size: int | None = None  # None: 16 on cuda, 1 on cpu
    notes: tuple[str, ...] = ()  # lines for the report (e.g. a preset's missing test set)


# ----------------------------------------------------------------------------------------- checks

def check_config(cfg: EvalConfig) -> tuple[str, ...]:
    """The modes to run, in order and without repeats; a UserError for any bad value."""
    if isinstance(cfg.testsets, (str, Path)):
        cfg.testsets = (cfg.testsets,)
    if isinstance(cfg.modes, str):
        cfg.modes = tuple(m.strip() for m in cfg.modes.split(",") if m.strip())
    if not cfg.testsets:
        raise UserError("No test set given; pass --testset FILE (JSONL or CSV) or --preset default.")
    if not cfg.modes:
        raise UserError(f"No mode given; choose from {', '.join(MODES)}.")
    modes = tuple(dict.fromkeys(check_mode(m) for m in cfg.modes))
    for name in ("limit", "limit_thinking", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be a positive number (got {value}); leave it out for all rows.")
    if cfg.n_boot < 1:
        raise UserError(f"--n-boot must be at least 1 (got {cfg.n_boot}).")
    if not cfg.ks or any(int(k) != k or k < 1 for k in cfg.ks):
        raise UserError(f"The recall cut-offs ks must be positive integers (got {cfg.ks}).")
    return modes


def _check_adapters(coder_cfg: CoderConfig, modes: tuple[str, ...]) -> None:
    for mode in modes:
        name = ADAPTER_MODES.get(mode)
        if name is None:
            continue
        path = coder_cfg.adapters.get(name)
        if not path or not Path(path).exists():
            flag = "--ft-adapter" if mode == "ft" else "--rag-adapter"
            raise UserError(f"Mode {mode} needs the {name} adapter, but {path} does not exist; train it with "
                            f"`oncocoder finetune`, pass {flag} DIR, or leave {mode} out of --modes.")


def _set_names(sets: list[TestSet]) -> list[str]:
    names, seen = [], Counter()
    for ts in sets:
        seen[ts.name] += 1
        names.append(ts.name if seen[ts.name] == 1 else f"{ts.name}-{seen[ts.name]}")
    return names


# ----------------------------------------------------------------------------------------- running

def run_eval(cfg: EvalConfig, coder: Coder | None = None, progress: bool = True) -> dict:
    """Evaluate every mode on every test set; returns the metrics dict of the one test set, or
    {set name: metrics} when there are several. A given `coder` is used as is (its config wins over
    cfg.base_model, cfg.adapters, cfg.device and cfg.batch_size)."""
    from oncocoder.eval.report import write_report
    from oncocoder.index.catalogue import load_catalogue

    modes = check_config(cfg)
    if coder is None:
        coder = Coder(CoderConfig(mode=modes[0], base_model=cfg.base_model, adapters=dict(cfg.adapters),
                                  device=cfg.device, batch_size=cfg.batch_size))
    _check_adapters(coder.cfg, modes)
    catalogue = coder.catalogue or load_catalogue()
    sets = [load_testset(p, catalogue, limit=cfg.limit) for p in cfg.testsets]
    root = Path(cfg.out) if cfg.out else config.cache_dir() / "eval" / datetime.now().strftime("%Y%m%d-%H%M%S")
    if root.exists() and not root.is_dir():
        raise UserError(f"The output path {root} is a file; give a folder with --out.")
    if progress:
        for note in cfg.notes:
            print(note)

    results, reports = {}, []
    names = _set_names(sets)
    for ts, name in zip(sets, names):
        out = root / name if len(sets) > 1 else root
        out.mkdir(parents=True, exist_ok=True)
        preds, reused = {}, {}
        for mode in modes:
            rows = ts.rows[:cfg.limit_thinking] if mode == "thinking" and cfg.limit_thinking else ts.rows
            preds[mode], reused[mode] = predict_mode(coder, rows, mode, out / f"predictions.{mode}.jsonl",
                                                     resume=cfg.resume, progress=progress, desc=f"{name} {mode}")
        result = score_predictions(ts, preds, catalogue, ks=cfg.ks, n_boot=cfg.n_boot, seed=cfg.seed)
        result["run"] = run_info(cfg, ts, modes, preds, reused, coder)
        result = _jsonable(result)
        write_json(result, out / "metrics.json")
        reports.append(write_report(result, out))
        results[name] = result
    for path in reports:
        print(f"Report: {path}")
    return results[names[0]] if len(sets) == 1 else results


def read_predictions(path: Path) -> list[Prediction]:
    """The predictions in a JSONL file; a line that does not parse (a truncated last line) is left out."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                out.append(Prediction.model_validate_json(line))
            except ValueError:
                continue
    return out


def _write_lines(path: Path, preds: list[Prediction]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in preds:
            f.write(p.model_dump_json() + "\n")
    os.replace(tmp, path)


def _expected_origin(coder: Coder, mode: str) -> tuple[str | None, str | None]:
    model = None if mode == "retrieval" else coder.cfg.base_model
    adapter = coder.cfg.adapters.get(ADAPTER_MODES[mode]) if mode in ADAPTER_MODES else None
    return model, adapter


def _code_rows(coder: Coder, rows: list, mode: str) -> list[Prediction]:
    """Predictions for these rows; an unexpected failure fails these rows (recorded), not the run."""
    try:
        return coder.code_batch([{"id": r.id, "text": r.text} for r in rows], mode=mode)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad batch must not end the evaluation
        model, adapter = _expected_origin(coder, mode)
        msg = f"The coder failed on this text ({exc.__class__.__name__}: {str(exc)[:200]})."
        return [Prediction(id=r.id, text=r.text, mode=mode, model=model, adapter=adapter, error=msg) for r in rows]


def _load_resources(coder: Coder, mode: str) -> None:
    """Load the retriever, the model and the mode's adapter before the clock runs, so that the first row's latency
    is not the loading time (compiling a constraint on first use still counts; it is cached on disk)."""
    coder.retriever  # noqa: B018 - the property loads it
    if mode != "retrieval":
        coder.llm_for(mode)


def predict_mode(coder: Coder, rows: list, mode: str, path: Path, resume: bool = True, progress: bool = False,
                 desc: str | None = None) -> tuple[list[Prediction], int]:
    """One prediction per row (in row order), written to `path` row by row. With `resume`, predictions already in
    `path` for the same row (id and text), mode, model and adapter are reused. Returns (predictions, reused)."""
    from tqdm import tqdm

    path = Path(path)
    by_id = {r.id: r for r in rows}
    model, adapter = _expected_origin(coder, mode)
    done: dict[str, Prediction] = {}
    if resume and path.exists():
        for p in read_predictions(path):
            row = by_id.get(str(p.id))
            if (row is not None and p.mode == mode and p.text == row.text and p.model == model
                    and p.adapter == adapter):
                done.setdefault(row.id, p)
    kept = [done[r.id] for r in rows if r.id in done]
    todo = [r for r in rows if r.id not in done]
    _write_lines(path, kept)  # drops stale and truncated lines before anything is appended
    if todo:
        _load_resources(coder, mode)
    size = coder.batch_size
    with tqdm(total=len(rows), initial=len(kept), desc=desc or mode, unit="text", disable=not progress) as bar, \
            open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            for row, pred in zip(chunk, _code_rows(coder, chunk, mode)):
                pred.id = row.id
                f.write(pred.model_dump_json() + "\n")
                f.flush()
                done[row.id] = pred
            bar.update(len(chunk))
    final = [done[r.id] for r in rows]
    if [r.id for r in rows] != [p.id for p in kept] + [r.id for r in todo]:
        _write_lines(path, final)  # resumed rows in the middle: restore row order
    return final, len(kept)


# ----------------------------------------------------------------------------------------- scoring

def _code(pred: Prediction | None, system: str) -> tuple[str | None, float]:
    """The predicted code and its confidence; an errored or missing prediction has no code (confidence 0)."""
    if pred is None or pred.error is not None:
        return None, 0.0
    result = getattr(pred, system)
    return (result.code, float(result.confidence)) if result is not None else (None, 0.0)


def _nan_mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _count(x: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isnan(x)))


def score_predictions(testset: TestSet, preds_by_mode: dict[str, list[Prediction]], catalogue,
                      ks: tuple[int, ...] = (1, 5, 10), n_boot: int = 2000, seed: int = 0,
                      pairs: tuple[tuple[str, str], ...] = COMPARISONS) -> dict:
    """All metrics (the metrics.json schema without `run`) from the predictions of each mode. Predictions are
    matched to test rows by id; a row a mode did not code is left out of that mode's numbers (and of every
    comparison with it)."""
    rows = testset.rows
    n = len(rows)
    gold = {s: [r.gold.get(s) for r in rows] for s in TARGETS}
    by_mode: dict[str, list[Prediction | None]] = {}
    for mode, preds in preds_by_mode.items():
        lookup = {str(p.id): p for p in preds}
        by_mode[mode] = [lookup.get(r.id) for r in rows]

    exact_arr: dict[str, dict[str, np.ndarray]] = {}
    out_modes: dict[str, dict] = {}
    coverage: dict[str, dict] = {}
    for mode, preds in by_mode.items():
        coded = [p is not None for p in preds]
        entry: dict = {"n_rows": int(sum(coded)), "errors": sum(p is not None and p.error is not None for p in preds)}
        exact_arr[mode] = {}
        for s in TARGETS:
            ex, pa, conf = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
            n_bad = 0
            for i, p in enumerate(preds):
                if p is None:
                    continue
                code, c = _code(p, s)
                if code is not None and not catalogue.is_valid(code, s):
                    n_bad += 1
                ex[i] = M.exact(code, gold[s][i])
                pa[i] = M.partial(code, gold[s][i], s)
                conf[i] = c if not math.isnan(ex[i]) else math.nan
            exact_arr[mode][s] = ex
            acc, lo, hi = stats.bootstrap_ci(ex, n_boot=n_boot, seed=seed)
            entry[s] = {"n": _count(ex), "exact": acc, "ci_low": lo, "ci_high": hi, "partial": _nan_mean(pa),
                        "malformed": n_bad / entry["n_rows"] if entry["n_rows"] else math.nan,
                        "n_malformed": n_bad, "ece": stats.expected_calibration_error(conf, ex)}
            if s == "icd10gm":
                curve = stats.accuracy_coverage_curve(conf, ex)
                coverage[mode] = {
                    "coverage_at_95": stats.coverage_at_accuracy(conf, ex, COVERAGE_TARGET),
                    "n": int(curve["coverage"].size),
                    "curve": {"coverage": [round(float(v), 4) for v in curve["coverage"]],
                              "accuracy": [round(float(v), 4) for v in curve["accuracy"]]}}
        tumor = np.full(n, np.nan)
        for i, (r, p) in enumerate(zip(rows, preds)):
            if p is not None and r.is_tumor is not None:
                tumor[i] = float(p.error is None and p.is_tumor is not None and p.is_tumor == r.is_tumor)
        acc, lo, hi = stats.bootstrap_ci(tumor, n_boot=n_boot, seed=seed)
        entry["is_tumor"] = {"accuracy": acc, "n": _count(tumor), "ci_low": lo, "ci_high": hi}
        lat = stats.latency_summary([p.latency_ms if p is not None and p.latency_ms is not None else math.nan
                                     for p in preds])
        entry["latency_ms"] = {k: lat[k] for k in ("p50", "p95", "mean", "n")}
        entry["texts_per_second"] = lat["texts_per_second"]
        if testset.has_derivable:
            full = np.array([r.derivable == "full" for r in rows])
            entry["full_only"] = {s: {"exact": _nan_mean(exact_arr[mode][s][full]),
                                      "n": _count(exact_arr[mode][s][full])} for s in TARGETS}
            entry["full_only"]["is_tumor"] = {"accuracy": _nan_mean(tumor[full]), "n": _count(tumor[full])}
        else:
            entry["full_only"] = None
        out_modes[mode] = entry

    comparisons = {}
    for a, b in pairs:
        if a in exact_arr and b in exact_arr:
            comparisons[f"{a}_vs_{b}"] = {
                s: {**stats.paired_bootstrap_diff(exact_arr[a][s], exact_arr[b][s], n_boot=n_boot, seed=seed),
                    **{k: v for k, v in stats.mcnemar_exact(exact_arr[a][s], exact_arr[b][s]).items() if k != "n"}}
                for s in TARGETS}

    return {"schema_version": SCHEMA_VERSION, "testset": testset.name, "modes": out_modes,
            "retrieval": retrieval_recall(rows, by_mode, ks), "comparisons": comparisons, "coverage": coverage,
            "per_chapter": per_chapter(rows, exact_arr, catalogue),
            "confusions": {mode: confusions(rows, preds) for mode, preds in by_mode.items()}}


def retrieval_recall(rows: list, by_mode: dict[str, list[Prediction | None]], ks: tuple[int, ...]) -> dict:
    """recall@k (exact and partial) of the candidate lists of one mode (the one with the most candidate lists;
    every mode uses the same retriever). A row whose candidates are missing (an error) counts as a miss."""
    def lists(mode):
        return sum(p is not None and p.candidates is not None for p in by_mode[mode])

    order = sorted(by_mode, key=lambda m: (-lists(m), MODES.index(m) if m in MODES else len(MODES), m))
    source = order[0] if order and lists(order[0]) else None
    out: dict = {"source_mode": source}
    for s in TARGETS:
        entry: dict = {"n": 0}
        for k in ks:
            entry[f"recall@{k}"] = math.nan
            entry[f"partial_recall@{k}"] = math.nan
        if source is not None:
            hits = {(lvl, k): [] for lvl in ("exact", "partial") for k in ks}
            for r, p in zip(rows, by_mode[source]):
                if p is None or r.gold.get(s) is None:
                    continue
                codes = [c["code"] for c in (p.candidates or {}).get(s) or []]
                for lvl, k in hits:
                    hits[(lvl, k)].append(M.recall_at_k(codes, r.gold[s], k, s, level=lvl))
            entry["n"] = len(hits[("exact", ks[0])])
            for (lvl, k), v in hits.items():
                entry[("recall@" if lvl == "exact" else "partial_recall@") + str(k)] = (
                    float(np.mean(v)) if v else math.nan)
        out[s] = entry
    return out


def chapter_of(code: str, catalogue) -> str:
    """ICD-10-GM chapter ("02") of a code, or its 3-character category where the catalogue has no chapter."""
    info = catalogue.info(code, "icd10gm")
    if info is not None and info.chapter:
        return info.chapter
    return info.category if info is not None and info.category else code[:3]


def per_chapter(rows: list, exact_arr: dict[str, dict[str, np.ndarray]], catalogue) -> dict:
    chapters = [chapter_of(r.gold["icd10gm"], catalogue) if r.gold.get("icd10gm") else None for r in rows]
    out = {}
    for mode, arrs in exact_arr.items():
        groups: dict[str, list[float]] = defaultdict(list)
        for ch, v in zip(chapters, arrs["icd10gm"]):
            if ch is not None and not math.isnan(v):
                groups[ch].append(v)
        out[mode] = {ch: {"exact": float(np.mean(v)), "n": len(v)} for ch, v in sorted(groups.items())}
    return out


def confusions(rows: list, preds: list[Prediction | None], top: int = N_CONFUSIONS) -> list[dict]:
    """The most frequent (gold -> predicted) ICD-10-GM errors; predicted is null for no code or an error."""
    counts: Counter = Counter()
    examples: dict[tuple, list[str]] = defaultdict(list)
    for r, p in zip(rows, preds):
        g = r.gold.get("icd10gm")
        if p is None or g is None:
            continue
        code, _ = _code(p, "icd10gm")
        if code == g:
            continue
        counts[(g, code)] += 1
        if len(examples[(g, code)]) < N_EXAMPLES:
            examples[(g, code)].append(r.text)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or ""))[:top]
    return [{"gold": g, "predicted": p, "count": c, "examples": examples[(g, p)]} for (g, p), c in ranked]


# ----------------------------------------------------------------------------------------- run record

def _adapter_info(path: str | None) -> dict:
    info: dict = {"path": path, "manifest_sha256": None, "base_model": None}
    manifest = Path(path) / "manifest.json" if path else None
    if manifest is not None and manifest.exists():
        info["manifest_sha256"] = sha256_file(manifest)
        try:
            info["base_model"] = json.loads(manifest.read_text(encoding="utf-8")).get("base_model")
        except (ValueError, AttributeError):
            pass
    return info


def _machine(coder: Coder) -> dict:
    import torch

    llm = getattr(coder, "_llm", None)
    device = getattr(llm, "device", None) or coder.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_device": str(device), "torch": torch.__version__, "gpu": gpu}


def run_info(cfg: EvalConfig, ts: TestSet, modes: tuple[str, ...], preds: dict, reused: dict, coder: Coder) -> dict:
    retriever = getattr(coder, "_retriever", None)
    index_cfg = getattr(retriever, "index_cfg", None)
    index_manifest = None
    if index_cfg is not None and (index_cfg.path() / "manifest.json").exists():
        index_manifest = {"path": str(index_cfg.path()), "manifest_sha256": sha256_file(index_cfg.path() / "manifest.json")}
    llm_modes = [m for m in modes if m != "retrieval"]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "testset": {"name": ts.name, "path": str(ts.path), "sha256": ts.sha256, "rows": len(ts.rows),
                    "problems": list(ts.problems)},
        "modes": list(modes),
        "rows": {m: len(p) for m, p in preds.items()},
        "reused": dict(reused),
        "limit": cfg.limit,
        "limit_thinking": cfg.limit_thinking,
        "ks": list(cfg.ks), "n_boot": cfg.n_boot, "seed": cfg.seed,
        "models": {"base_model": coder.cfg.base_model if llm_modes else None,
                   "embedding_model": index_cfg.embedding.model if index_cfg is not None else None,
                   "index": index_manifest},
        "adapters": {m: _adapter_info(coder.cfg.adapters.get(ADAPTER_MODES[m])) for m in modes if m in ADAPTER_MODES},
        "oncocoder_version": __version__,
        "machine": _machine(coder),
        "notes": list(cfg.notes),
    }


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def write_json(metrics: dict, path: Path) -> None:
    """metrics.json: NaN and infinities become null (strict JSON)."""
    Path(path).write_text(json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                          encoding="utf-8")


# ----------------------------------------------------------------------------------------- CLI helpers

def add_arguments(parser) -> None:
    """The flags of `oncocoder eval`."""
    parser.add_argument("--testset", action="append", metavar="FILE",
                        help="test set in the project format, JSONL or CSV (repeat for several; default: the dev set)")
    parser.add_argument("--modes", help=f"comma-separated modes (default: all of {','.join(MODES)})")
    parser.add_argument("--out", help="output folder (default: <cache>/eval/<timestamp>)")
    parser.add_argument("--base-model", default=config.DEFAULT_BASE_MODEL,
                        help="Hugging Face causal LM id or folder (default: %(default)s)")
    parser.add_argument("--ft-adapter", help="LoRA adapter folder of the ft mode (default: the shipped one)")
    parser.add_argument("--rag-adapter", help="LoRA adapter folder of the rag+ft mode (default: the shipped one)")
    parser.add_argument("--limit", type=int, help="evaluate the first N rows of each test set")
    parser.add_argument("--limit-thinking", type=int, help="thinking mode: the first N rows only (default: all)")
    parser.add_argument("--no-resume", action="store_true",
                        help="code every row again even when --out holds predictions of an earlier run")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="texts per forward pass (default: 1 on CPU, 16 on GPU)")
    parser.add_argument("--preset", choices=["default"],
                        help="default: all modes on the dev set and the held-out catalogue split, thinking on the "
                             "first 10 rows (flags given as well take precedence)")


def _parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise UserError(f"--modes is empty; choose from {','.join(MODES)}.")
    return tuple(check_mode(m) for m in modes)


def from_args(args) -> EvalConfig:
    adapters = _default_adapters()
    if getattr(args, "ft_adapter", None):
        adapters[ADAPTER_MODES["ft"]] = args.ft_adapter
    if getattr(args, "rag_adapter", None):
        adapters[ADAPTER_MODES["rag+ft"]] = args.rag_adapter
    testsets: tuple = tuple(Path(p) for p in args.testset) if args.testset else (DEV_SET,)
    limit_thinking, notes = args.limit_thinking, []
    if args.preset == "default":
        if not args.testset:
            heldout = heldout_path()
            if heldout.exists():
                testsets = (DEV_SET, heldout)
            else:
                note = (f"The held-out catalogue split {heldout} is missing (build it with `oncocoder data build`); "
                        "evaluating on the dev set only.")
                notes.append(note)  # run_eval prints it and the report states it
        if limit_thinking is None:
            limit_thinking = 10
    return EvalConfig(testsets=testsets, modes=_parse_modes(args.modes) if args.modes else MODES,
                      out=Path(args.out) if args.out else None, base_model=args.base_model, adapters=adapters,
                      limit=args.limit, limit_thinking=limit_thinking, n_boot=args.n_boot, seed=args.seed,
                      resume=not args.no_resume, device=args.device, batch_size=args.batch_size, notes=tuple(notes))
