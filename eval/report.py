"""Reports from a metrics dict (the metrics.json schema of `oncocoder.eval.run`): report.md, metrics.csv and three
PNG plots (accuracy.png, accuracy_vs_latency.png, coverage.png). Pure rendering: every number comes from the dict.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from oncocoder.agent.coder import MODES

TARGETS = ("icd10gm", "icdo_topography", "icdo_morphology")
LABELS = {"icd10gm": "ICD-10-GM", "icdo_topography": "ICD-O-3 topography", "icdo_morphology": "ICD-O-3 morphology"}
SHORT = {"icd10gm": "ICD-10-GM", "icdo_topography": "Topography", "icdo_morphology": "Morphology"}
# ICD-10-GM 2025 chapters
CHAPTERS = {
    "01": "I A00-B99", "02": "II C00-D48", "03": "III D50-D90", "04": "IV E00-E90", "05": "V F00-F99",
    "06": "VI G00-G99", "07": "VII H00-H59", "08": "VIII H60-H95", "09": "IX I00-I99", "10": "X J00-J99",
    "11": "XI K00-K93", "12": "XII L00-L99", "13": "XIII M00-M99", "14": "XIV N00-N99", "15": "XV O00-O99",
    "16": "XVI P00-P96", "17": "XVII Q00-Q99", "18": "XVIII R00-R99", "19": "XIX S00-T98", "20": "XX V01-Y84",
    "21": "XXI Z00-Z99", "22": "XXII U00-U99",
}
CSV_COLUMNS = ("testset", "mode", "target", "n", "exact", "ci_low", "ci_high", "partial", "malformed", "ece",
               "full_only_exact", "full_only_n", "tumor_accuracy", "latency_p50_ms", "texts_per_second")


# ----------------------------------------------------------------------------------------- helpers

def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pct(x, digits: int = 1) -> str:
    x = _num(x)
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _pct_ci(x, lo, hi) -> str:
    if _num(x) is None:
        return "–"
    if _num(lo) is None or _num(hi) is None:
        return _pct(x)
    return f"{_pct(x)} ({_pct(lo)}–{_pct(hi)})"


def _pp_ci(d, lo, hi) -> str:
    def f(v):
        return f"{100 * v:+.1f}"
    if _num(d) is None:
        return "–"
    return f"{f(d)} ({f(lo)} to {f(hi)})" if _num(lo) is not None and _num(hi) is not None else f(d)


def _ms(x) -> str:
    x = _num(x)
    return "–" if x is None else (f"{x:.0f}" if x >= 10 else f"{x:.1f}")


def _p(x) -> str:
    x = _num(x)
    if x is None:
        return "–"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def mode_order(metrics: dict) -> list[str]:
    modes = list(metrics.get("modes", {}))
    return sorted(modes, key=lambda m: (MODES.index(m) if m in MODES else len(MODES), modes.index(m)))


def _schema_text() -> str:
    from oncocoder.eval import run

    doc = run.__doc__ or ""
    start = doc.find("metrics.json (schema_version")
    return doc[start:].strip() if start >= 0 else doc.strip()


# ----------------------------------------------------------------------------------------- Markdown

def render_markdown(metrics: dict) -> str:
    modes = mode_order(metrics)
    run = metrics.get("run") or {}
    ts = run.get("testset") or {}
    name = metrics.get("testset") or ts.get("name") or "test set"
    L: list[str] = [f"# oncocoder evaluation: {name}", ""]
    L += ["<details><summary>Schema of metrics.json (stable; this report is rendered from it)</summary>", "",
          "```text", _schema_text(), "```", "", "</details>", ""]
    if run:
        L += [f"Run of {run.get('date', '?')} on `{ts.get('path', '?')}` ({ts.get('rows', '?')} rows, sha256 "
              f"`{ts.get('sha256', '?')}`). All numbers in this report come from this run; none is copied from the "
              "paper or from another run.", ""]
    thinking = metrics["modes"].get("thinking")
    n_rows = max((m["n_rows"] for m in metrics["modes"].values()), default=0)
    if thinking is not None and thinking["n_rows"] < n_rows:
        L += [f"**thinking** coded only the first {thinking['n_rows']} rows (limit_thinking = "
              f"{run.get('limit_thinking', thinking['n_rows'])}); its numbers and every comparison with it use "
              "exactly those rows, so they are not directly comparable with the other rows of the main table.", ""]
    for note in run.get("notes") or []:
        L += [f"Note: {note}", ""]

    # main table
    L += ["## Results", "",
          "Exact and partial accuracy in % with 95 % bootstrap CIs; partial = same 3-character category "
          "(morphology: same first four digits). Tumor = tumor recognition accuracy. Malformed = share of outputs "
          "that are not valid codable codes (ICD-10-GM / topography / morphology). Latency = median ms per text.",
          ""]
    header = ["Mode", "Rows"]
    for s in TARGETS:
        header += [f"{SHORT[s]} exact", f"{SHORT[s]} partial"]
    header += ["Tumor", "Malformed %", "Errors", "p50 ms", "Texts/s"]
    rows = []
    for mode in modes:
        m = metrics["modes"][mode]
        row = [mode, m["n_rows"]]
        for s in TARGETS:
            row += [_pct_ci(m[s]["exact"], m[s]["ci_low"], m[s]["ci_high"]), _pct(m[s]["partial"])]
        t = m["is_tumor"]
        row += [_pct_ci(t["accuracy"], t["ci_low"], t["ci_high"]),
                " / ".join(_pct(m[s]["malformed"]) for s in TARGETS), m["errors"],
                _ms(m["latency_ms"]["p50"]), "–" if _num(m["texts_per_second"]) is None
                else f"{m['texts_per_second']:.2f}"]
        rows.append(row)
    L += _table(header, rows) + [""]
    L += ["Rows scored per target (coded by the mode and with a valid gold code; a null gold is not scored):", ""]
    L += _table(["Mode"] + [SHORT[s] for s in TARGETS] + ["Tumor"],
                [[mode] + [metrics["modes"][mode][s]["n"] for s in TARGETS] + [metrics["modes"][mode]["is_tumor"]["n"]]
                 for mode in modes]) + [""]

    if any(metrics["modes"][m].get("full_only") for m in modes):
        L += ["### Rows with derivable = full", "",
              "Only the rows whose codes the text fully supports (`derivable == \"full\"`); exact accuracy in % (n).",
              ""]
        rows = []
        for mode in modes:
            f = metrics["modes"][mode]["full_only"]
            rows.append([mode] + [f"{_pct(f[s]['exact'])} ({f[s]['n']})" for s in TARGETS]
                        + [f"{_pct(f['is_tumor']['accuracy'])} ({f['is_tumor']['n']})"])
        L += _table(["Mode"] + [SHORT[s] for s in TARGETS] + ["Tumor"], rows) + [""]

    # comparisons
    L += ["## Comparisons", "",
          "Difference in exact accuracy (percentage points, a − b) on the rows both modes coded, paired by row id, "
          "with a 95 % paired bootstrap CI; exact two-sided McNemar test (b01: a wrong and b right, b10: a right and "
          "b wrong).", ""]
    if metrics.get("comparisons"):
        rows = []
        for key, per in metrics["comparisons"].items():
            a, b = key.split("_vs_")
            for s in TARGETS:
                c = per[s]
                rows.append([f"{a} − {b}", SHORT[s], c["n"], _pp_ci(c["diff"], c["ci_low"], c["ci_high"]),
                             c["b01"], c["b10"], _p(c["p_value"])])
        L += _table(["Comparison", "Target", "n", "Δ exact, pp (95 % CI)", "b01", "b10", "McNemar p"], rows,
                    "llrrrrr") + [""]
    else:
        L += ["No comparison: it needs two of the compared modes in one run.", ""]

    # retrieval
    r = metrics.get("retrieval") or {}
    L += ["## Retrieval recall@k", ""]
    if r.get("source_mode"):
        ks = sorted({int(k.split("@")[1]) for s in TARGETS for k in r[s] if k.startswith("recall@")})
        L += ["Share of rows whose gold code is among the first k retrieved candidates (exact code / partial key): "
              "the ceiling of the RAG modes, which choose among these candidates. "
              f"(Candidate lists of the {r['source_mode']} predictions.)", ""]
        rows = [[LABELS[s], r[s]["n"]] + [_pct(r[s].get(f"recall@{k}")) for k in ks]
                + [_pct(r[s].get(f"partial_recall@{k}")) for k in ks] for s in TARGETS]
        L += _table(["Target", "n"] + [f"recall@{k}" for k in ks] + [f"partial@{k}" for k in ks], rows) + [""]
    else:
        L += ["No candidate lists (every row failed).", ""]

    # calibration
    L += ["## Calibration and selective coding", "",
          "Expected calibration error (10 equal-width bins, lower is better) of each mode's confidence; a missing "
          "code has confidence 0. Coverage at 95 %: the largest share of the most confident rows (ICD-10-GM "
          "confidence) whose exact accuracy reaches 95 % — the share a coder could accept unreviewed.", ""]
    cov = metrics.get("coverage") or {}
    rows = [[mode] + [_pct(metrics["modes"][mode][s]["ece"]) for s in TARGETS]
            + [_pct((cov.get(mode) or {}).get("coverage_at_95"))] for mode in modes]
    L += _table(["Mode"] + [f"ECE {SHORT[s]} %" for s in TARGETS] + ["Coverage at 95 % exact"], rows) + [""]
    if "rag+ft" in cov:
        L += [f"rag+ft reaches 95 % exact ICD-10-GM accuracy at {_pct(cov['rag+ft'].get('coverage_at_95'))} % "
              "coverage.", ""]
    L += ["Plots: `accuracy.png` (accuracy with CIs), `accuracy_vs_latency.png` (ICD-10-GM exact against median time "
          "per text), `coverage.png` (accuracy-coverage curves).", ""]

    # per chapter
    pc = metrics.get("per_chapter") or {}
    chapters = sorted({ch for per in pc.values() for ch in per})
    if chapters:
        L += ["## ICD-10-GM exact accuracy per chapter", "", "By the chapter of the gold code; % (n).", ""]
        rows = []
        for ch in chapters:
            rows.append([f"{CHAPTERS.get(ch, ch)}"] + [
                f"{_pct(pc[m][ch]['exact'])} ({pc[m][ch]['n']})" if ch in pc.get(m, {}) else "–" for m in modes])
        L += _table(["Chapter"] + modes, rows) + [""]

    # confusions
    conf = metrics.get("confusions") or {}
    L += ["## Most frequent ICD-10-GM confusions", ""]
    for mode in modes:
        items = conf.get(mode) or []
        L += [f"### {mode}", ""]
        if not items:
            L += ["No confusion.", ""]
            continue
        rows = [[c["gold"], c["predicted"] or "— (no code / error)", c["count"],
                 "; ".join(c["examples"])] for c in items]
        L += _table(["Gold", "Predicted", "Count", "Examples"], rows, "llrl") + [""]

    # the run
    if run:
        L += ["## This run", ""]
        models = run.get("models") or {}
        L += [f"- Date: {run.get('date')}",
              f"- Test set: `{ts.get('path')}`, sha256 `{ts.get('sha256')}`, {ts.get('rows')} rows"
              + (f" (first {run['limit']} rows)" if run.get("limit") else ""),
              "- Modes and rows coded: " + ", ".join(f"{m} {n}" for m, n in (run.get("rows") or {}).items()),
              "- Predictions reused from an earlier run in this folder: "
              + (", ".join(f"{m} {n}" for m, n in (run.get("reused") or {}).items() if n) or "none"),
              f"- Thinking rows: {run.get('limit_thinking') or 'all'}",
              f"- Base model: {models.get('base_model') or '– (no LLM mode)'}",
              f"- Embedding model: {models.get('embedding_model') or '–'}"
              + (f"; index `{models['index']['path']}` (manifest sha256 `{models['index']['manifest_sha256']}`)"
                 if models.get("index") else "")]
        for mode, a in (run.get("adapters") or {}).items():
            L.append(f"- Adapter for {mode}: `{a.get('path')}`, manifest sha256 "
                     f"`{a.get('manifest_sha256') or 'no manifest'}`"
                     + (f", trained on {a['base_model']}" if a.get("base_model") else ""))
        mach = run.get("machine") or {}
        L += [f"- Bootstrap: {run.get('n_boot')} resamples, seed {run.get('seed')}; recall cut-offs {run.get('ks')}",
              f"- oncocoder {run.get('oncocoder_version')}; {mach.get('platform')}, Python {mach.get('python')}, "
              f"{mach.get('cpu_count')} CPUs, torch {mach.get('torch')} on {mach.get('torch_device')}"
              + (f" ({mach['gpu']})" if mach.get("gpu") else ""), ""]
        problems = ts.get("problems") or []
        L += [f"### Test set problems ({len(problems)})", ""]
        L += [f"- {p}" for p in problems] if problems else ["None: every gold code is a valid codable code."]
        L += ["", "Rows with an invalid gold code are listed here and not scored for that target.", ""]
        L += ["Rerun: `" + rerun_command(run) + "`", ""]
    return "\n".join(L)


def rerun_command(run: dict) -> str:
    parts = ["oncocoder eval", f"--testset {run.get('testset', {}).get('path')}", f"--modes {','.join(run['modes'])}"]
    if (run.get("models") or {}).get("base_model"):
        parts.append(f"--base-model {run['models']['base_model']}")
    for mode, flag in (("ft", "--ft-adapter"), ("rag+ft", "--rag-adapter")):
        if mode in (run.get("adapters") or {}):
            parts.append(f"{flag} {run['adapters'][mode]['path']}")
    for key, flag in (("limit", "--limit"), ("limit_thinking", "--limit-thinking")):
        if run.get(key):
            parts.append(f"{flag} {run[key]}")
    parts += [f"--n-boot {run.get('n_boot')}", f"--seed {run.get('seed')}"]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------- CSV

def write_csv(metrics: dict, path: Path) -> None:
    """One row per mode x target."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for mode in mode_order(metrics):
            m = metrics["modes"][mode]
            full = m.get("full_only") or {}
            for s in TARGETS:
                t = m[s]
                vals = [metrics.get("testset"), mode, s, t["n"], t["exact"], t["ci_low"], t["ci_high"], t["partial"],
                        t["malformed"], t["ece"], (full.get(s) or {}).get("exact"), (full.get(s) or {}).get("n"),
                        m["is_tumor"]["accuracy"], m["latency_ms"]["p50"], m["texts_per_second"]]
                w.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v))
                            else (round(v, 6) if isinstance(v, float) else v) for v in vals])


# ----------------------------------------------------------------------------------------- plots

def _figure(size=(8.0, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    return fig, fig.add_subplot()


def plot_accuracy(metrics: dict, path: Path) -> None:
    fig, ax = _figure()
    modes = mode_order(metrics)
    groups = list(TARGETS) + ["is_tumor"]
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        m = metrics["modes"][mode]
        vals, low, high = [], [], []
        for g in groups:
            e = m[g]
            v = _num(e["accuracy"] if g == "is_tumor" else e["exact"])
            lo, hi = _num(e["ci_low"]), _num(e["ci_high"])
            vals.append(v or 0.0)
            low.append(max(0.0, v - lo) if v is not None and lo is not None else 0.0)
            high.append(max(0.0, hi - v) if v is not None and hi is not None else 0.0)
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, vals, width, yerr=[low, high], capsize=2, label=mode)
    ax.set_xticks(range(len(groups)), [SHORT.get(g, "Tumor") for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (exact; tumor recognition)")
    ax.set_title(f"Accuracy with 95 % CIs: {metrics.get('testset', '')}")
    ax.legend(fontsize=8, ncol=min(6, max(1, len(modes))), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_accuracy_vs_latency(metrics: dict, path: Path) -> None:
    fig, ax = _figure((6.5, 4.5))
    plotted = 0
    for mode in mode_order(metrics):
        m = metrics["modes"][mode]
        x, y = _num(m["latency_ms"]["p50"]), _num(m["icd10gm"]["exact"])
        if x is None or y is None:
            continue
        x = max(x, 0.01)
        lo, hi = _num(m["icd10gm"]["ci_low"]), _num(m["icd10gm"]["ci_high"])
        yerr = [[y - lo if lo is not None else 0.0], [hi - y if hi is not None else 0.0]]
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3, label=mode)
        ax.annotate(mode, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        plotted += 1
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("median time per text, ms (log scale)")
    ax.set_ylabel("ICD-10-GM exact accuracy")
    ax.set_title("Accuracy against time per text")
    if not plotted:
        ax.text(0.5, 0.5, "no timed predictions", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_coverage(metrics: dict, path: Path) -> None:
    fig, ax = _figure((6.5, 4.5))
    for mode in mode_order(metrics):
        curve = ((metrics.get("coverage") or {}).get(mode) or {}).get("curve") or {}
        if curve.get("coverage"):
            ax.plot(curve["coverage"], curve["accuracy"], label=mode, drawstyle="steps-post")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="95 %")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("coverage (share of most confident rows)")
    ax.set_ylabel("ICD-10-GM exact accuracy")
    ax.set_title("Accuracy-coverage curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_report(metrics: dict, out: Path) -> Path:
    """report.md, metrics.csv, accuracy.png, accuracy_vs_latency.png and coverage.png in `out`; returns the
    path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(metrics, out / "metrics.csv")
    plot_accuracy(metrics, out / "accuracy.png")
    plot_accuracy_vs_latency(metrics, out / "accuracy_vs_latency.png")
    plot_coverage(metrics, out / "coverage.png")
    report = out / "report.md"
    report.write_text(render_markdown(metrics) + "\n", encoding="utf-8")
    return report
