"""The Gradio demo: code a German tumor diagnosis text, compare modes, code a file, look codes up.

Start it with `oncocoder demo` (or `make demo`), which calls `launch()`; it serves on http://127.0.0.1:7860.

Tabs
- Kodieren: one text, one mode -> ICD-10-GM, ICD-O-3 topography and morphology (code, title, confidence), tumor
  yes/no, latency, the retrieved candidates (chosen codes marked ✓) and, in mode `thinking`, the model's reasoning.
- Vergleich: one text through several modes, one table row per mode.
- Batch: a CSV (`text` column, optional `id`) or JSONL (`id`, `text`) file -> a predictions JSONL file in exactly
  the format of `oncocoder code --input` (agent/batch.code_file), with a summary.
- Katalog: look a code up (title, ancestors, codable or not) and search the catalogue as the retriever does.

One `Coder` serves every tab and session. It loads the retriever and the language model on first use, so the first
request of a kind is slow (the status says "Lade Modelle …"); model calls run one at a time behind a lock, and the
queue holds the rest. A user mistake (empty or over-long text, a missing adapter, a bad file) is a `UserError`: its
sentence is shown as a warning and in the tab's status line, and the app goes on serving. The app serves no files
but the uploads and the predictions files it writes (`allowed_paths` stays empty).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from oncocoder import config
from oncocoder.agent.batch import code_file, read_rows
from oncocoder.agent.coder import MODES, Coder, CoderConfig, Prediction, check_mode
from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue, load_catalogue, normalize_code
from oncocoder.index.retrieve import validate_text
from oncocoder.index.store import IndexConfig

EXAMPLES = [
    "Mamma-Ca li. oben außen",
    "Z.n. Prostatakarzinom",
    "Adeno-Ca Sigma mit hepatischen Filiae",
    "NSCLC re. OL",
    "Basaliom Nasenrücken",
    "Glioblastom temporal re.",
]
SYSTEM_LABELS = {"icd10gm": "ICD-10-GM", "icdo_topography": "ICD-O-3 Topographie",
                 "icdo_morphology": "ICD-O-3 Morphologie"}
CANDIDATE_HEADERS = ["✓", "System", "Code", "Titel", "Katalogbegriff", "Score"]
COMPARE_HEADERS = ["Modus", "ICD-10-GM", "Topographie", "Morphologie", "Tumor", "Latenz (ms)", "Hinweis"]
SEARCH_HEADERS = ["System", "Code", "Titel", "Katalogbegriff", "Score"]
MAX_UPLOAD = "5mb"  # per uploaded file
MAX_BATCH_ROWS = 1000  # larger files: `oncocoder code --input FILE --output OUT.jsonl`
LOADING = "⏳ Lade Modelle … (der erste Aufruf lädt Retriever und Sprachmodell und dauert länger)"


class Models:
    """The app's one Coder, shared by all tabs and sessions; model calls run one at a time."""

    def __init__(self, coder: Coder):
        self.coder = coder
        self._lock = threading.Lock()

    def needs_loading(self, mode: str) -> bool:
        return not self.coder.loaded(mode)

    def code(self, text: str, mode: str) -> Prediction:
        with self._lock:
            return self.coder.code(text, mode=mode)

    def code_file(self, rows: list[dict], out: Path, mode: str, progress) -> dict:
        with self._lock:
            return code_file(self.coder, rows, out, mode=mode, progress=progress)

    def search(self, text: str, k: int, systems: list[str]):
        with self._lock:  # only the first call loads; searches themselves are quick
            retriever = self.coder.retriever
        return retriever.search(text, k=k, systems=systems)

    def catalogue(self) -> Catalogue:
        return self.coder.catalogue or load_catalogue(IndexConfig().alphabet)


def _fail(status: gr.Markdown, exc: Exception) -> dict:
    gr.Warning(str(exc))
    return {status: f"⚠️ {exc}"}


def _percent(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}".replace("%", " %")


# ---------------------------------------------------------------------- Kodieren
def result_card(system: str, pred: Prediction) -> str:
    res = getattr(pred, system)
    head = f"**{SYSTEM_LABELS[system]}**\n\n"
    if res is None:
        if system != "icd10gm" and pred.is_tumor is False:
            return head + "– (keine Tumordiagnose)"
        return head + ("– (keine Histologie genannt)" if system == "icdo_morphology" else "–")
    return head + f"### {res.code}\n{res.title}\n\nKonfidenz: {_percent(res.confidence)}"


def meta_line(pred: Prediction) -> str:
    tumor = {True: "ja", False: "nein", None: "–"}[pred.is_tumor]
    if pred.is_tumor_confidence is not None:
        tumor += f" ({_percent(pred.is_tumor_confidence)})"
    latency = "–" if pred.latency_ms is None else f"{pred.latency_ms:.0f} ms"
    return f"Tumordiagnose: **{tumor}** · Modus: {pred.mode} · Latenz: {latency}"


def candidates_table(pred: Prediction):
    rows = []
    for system, cands in (pred.candidates or {}).items():
        chosen = getattr(pred, system, None)
        for c in cands:
            mark = "✓" if chosen is not None and c["code"] == chosen.code else ""
            rows.append([mark, SYSTEM_LABELS.get(system, system), c["code"], c["title"], c["matched"],
                         round(c["score"], 4)])
    df = pd.DataFrame(rows, columns=CANDIDATE_HEADERS)
    if df.empty:
        return df

    def bold_chosen(row):
        style = "font-weight: bold; background-color: rgba(34, 197, 94, 0.15)" if row["✓"] else ""
        return [style] * len(row)

    return df.style.apply(bold_chosen, axis=1).format({"Score": "{:.4f}"})


def build_code_tab(models: Models) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Diagnosetext", placeholder="z. B. Mamma-Ca li. oben außen", lines=2,
                              max_length=config.MAX_TEXT_CHARS * 2, elem_id="code-text")
            gr.Examples(EXAMPLES, inputs=[text], label="Beispiele (anklicken)")
        with gr.Column(scale=2):
            mode = gr.Radio(list(MODES), value=config.DEFAULT_MODE, label="Modus", elem_id="code-mode",
                            info="retrieval: nur Suche · base/ft: Modell ohne Kandidaten · rag/rag+ft: Modell wählt "
                                 "unter Kandidaten · thinking: erst Überlegung, dann Antwort")
            run = gr.Button("Kodieren", variant="primary", elem_id="code-run")
    status = gr.Markdown(elem_id="code-status")
    with gr.Row():
        cards = {s: gr.Markdown(elem_id=f"{s.replace('_', '-')}-result", container=True) for s in config.SYSTEMS}
    meta = gr.Markdown(elem_id="code-meta")
    with gr.Accordion("Überlegung des Modells (thinking)", open=True, visible=False,
                      elem_id="reasoning-accordion") as reasoning_box:
        reasoning = gr.Textbox(show_label=False, interactive=False, lines=6, max_lines=20, elem_id="reasoning")
    candidates = gr.Dataframe(headers=CANDIDATE_HEADERS, label="Gefundene Kandidaten (✓ = gewählt)",
                              interactive=False, wrap=True, elem_id="candidates-table",
                              column_widths=["4%", "14%", "9%", "34%", "30%", "9%"])
    outputs = [status, *cards.values(), meta, reasoning_box, reasoning, candidates]
    cleared = {**{c: "" for c in cards.values()}, meta: "", reasoning_box: gr.Accordion(visible=False),
               reasoning: "", candidates: pd.DataFrame(columns=CANDIDATE_HEADERS)}

    def code_text(text, mode):
        try:
            text, mode = validate_text(text), check_mode(mode)
        except UserError as exc:
            yield {**cleared, **_fail(status, exc)}
            return
        yield {**cleared, status: LOADING if models.needs_loading(mode) else "Kodiere …"}
        try:
            pred = models.code(text, mode)
            if pred.error:
                raise UserError(pred.error)
        except UserError as exc:
            yield _fail(status, exc)
            return
        yield {status: "", **{cards[s]: result_card(s, pred) for s in config.SYSTEMS}, meta: meta_line(pred),
               reasoning_box: gr.Accordion(visible=pred.reasoning is not None), reasoning: pred.reasoning or "",
               candidates: candidates_table(pred)}

    gr.on([run.click, text.submit], code_text, inputs=[text, mode], outputs=outputs)


# ---------------------------------------------------------------------- Vergleich
def compare_row(mode: str, pred: Prediction | None, error: str | None) -> list:
    def cell(res):
        return "–" if res is None else f"{res.code} ({_percent(res.confidence)})"

    if pred is None or error:
        return [mode, "–", "–", "–", "–", None, error]
    tumor = {True: "ja", False: "nein", None: "–"}[pred.is_tumor]
    return [mode, cell(pred.icd10gm), cell(pred.icdo_topography), cell(pred.icdo_morphology), tumor,
            None if pred.latency_ms is None else round(pred.latency_ms), ""]


def build_compare_tab(models: Models) -> None:
    with gr.Row():
        text = gr.Textbox(label="Diagnosetext", lines=2, scale=3, elem_id="compare-text",
                          max_length=config.MAX_TEXT_CHARS * 2)
        modes = gr.CheckboxGroup(list(MODES), value=["retrieval", "rag"], label="Modi", scale=2,
                                 elem_id="compare-modes")
    gr.Examples(EXAMPLES, inputs=[text], label="Beispiele")
    run = gr.Button("Vergleichen", variant="primary", elem_id="compare-run")
    status = gr.Markdown(elem_id="compare-status")
    table = gr.Dataframe(headers=COMPARE_HEADERS, label="Ergebnis je Modus", interactive=False, wrap=True,
                         elem_id="compare-table", column_widths=["9%", "13%", "13%", "13%", "7%", "10%", "35%"])

    def compare(text, modes, progress=gr.Progress()):
        try:
            text = validate_text(text)
            if not modes:
                raise UserError("Choose at least one mode to compare.")
        except UserError as exc:
            return {**_fail(status, exc), table: pd.DataFrame(columns=COMPARE_HEADERS)}
        rows = []
        for n, mode in enumerate(m for m in MODES if m in modes):
            progress((n, len(modes)), desc=f"{mode}: " + ("Lade Modelle …" if models.needs_loading(mode) else
                                                          "kodiere …"), unit="Modi")
            try:
                pred = models.code(text, mode)
                rows.append(compare_row(mode, pred, pred.error))
            except UserError as exc:  # e.g. a missing adapter: the other modes still run
                rows.append(compare_row(mode, None, str(exc)))
        return {status: "", table: pd.DataFrame(rows, columns=COMPARE_HEADERS)}

    gr.on([run.click, text.submit], compare, inputs=[text, modes], outputs=[status, table])


# ---------------------------------------------------------------------- Batch
def batch_summary(summary: dict, mode: str) -> str:
    rate = summary.get("texts_per_second")
    return (f"**{summary['rows']}** Zeilen · **{summary['errors']}** mit Fehler · {summary['seconds']} s · "
            f"{rate if rate is not None else '–'} Texte/s · Modus: {mode}")


def load_upload(path: str | None) -> list[dict]:
    """The rows of an uploaded file, or a UserError that says what is wrong with it."""
    if not path:
        raise UserError("Upload a .csv file (with a `text` column) or a .jsonl file (`id`, `text` per line) first.")
    name = Path(path).name
    try:
        rows = read_rows(path)
    except UserError:
        raise
    except Exception as exc:  # malformed beyond what the readers recover from (e.g. a binary file)
        raise UserError(f"{name} could not be read as CSV or JSONL ({exc.__class__.__name__}); "
                        "upload a UTF-8 text file.") from exc
    if len(rows) > MAX_BATCH_ROWS:
        raise UserError(f"{name} has {len(rows)} rows; the demo codes at most {MAX_BATCH_ROWS}. Use "
                        "`oncocoder code --input FILE --output OUT.jsonl` for larger files.")
    return rows


def prune(out_dir: Path, max_age_s: float = 6 * 3600) -> None:
    """Remove predictions files older than `max_age_s` (Gradio has served its own copy by then)."""
    now = time.time()
    for old in out_dir.glob("*/*.jsonl"):
        if now - old.stat().st_mtime > max_age_s:
            old.unlink(missing_ok=True)
            try:
                old.parent.rmdir()
            except OSError:
                pass


def build_batch_tab(models: Models, out_dir: Path) -> None:
    gr.Markdown("CSV mit Spalte `text` (optional `id`) oder JSONL mit `id` und `text` je Zeile. Ergebnis: eine "
                "JSON-Zeile je Eingabezeile, in derselben Reihenfolge (Format wie `oncocoder code --input`).")
    with gr.Row():
        upload = gr.File(label="Eingabedatei", file_types=[".csv", ".jsonl", ".json", ".ndjson"],
                         type="filepath", elem_id="batch-upload")
        mode = gr.Radio(list(MODES), value=config.DEFAULT_MODE, label="Modus", elem_id="batch-mode")
    run = gr.Button("Datei kodieren", variant="primary", elem_id="batch-run")
    status = gr.Markdown(elem_id="batch-status")
    summary = gr.Markdown(elem_id="batch-summary")
    download = gr.File(label="Vorhersagen (JSONL)", interactive=False, elem_id="batch-download")

    def code_upload(path, mode, progress=gr.Progress()):
        try:
            rows, mode = load_upload(path), check_mode(mode)
            progress((0, len(rows)), desc="Lade Modelle …" if models.needs_loading(mode) else "Kodiere …",
                     unit="Texte")
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                progress((done, len(rows)), desc="Kodiere …", unit="Texte")

            prune(out_dir)
            target = out_dir / uuid.uuid4().hex / f"predictions-{Path(path).stem}-{mode.replace('+', '-')}.jsonl"
            target.parent.mkdir(parents=True)
            result = models.code_file(rows, target, mode, tick)
        except UserError as exc:
            return {**_fail(status, exc), summary: "", download: None}
        return {status: "", summary: batch_summary(result, mode), download: str(target)}

    run.click(code_upload, inputs=[upload, mode], outputs=[status, summary, download])


# ---------------------------------------------------------------------- Katalog
def describe_code(cat: Catalogue, system: str, code: str) -> str:
    if not code or not code.strip():
        raise UserError("Enter a code, e.g. C50.4 (ICD-10-GM), C50.4 (topography) or 8500/3 (morphology).")
    if system not in cat.codes:
        raise UserError(f"Unknown system {system!r}; choose one of {', '.join(cat.systems)}.")
    norm = normalize_code(code, system)
    info = cat.info(norm, system)
    if info is None:
        elsewhere = [SYSTEM_LABELS.get(s, s) for s in cat.systems if s != system and cat.info(code, s)]
        hint = f"it is a code of {' and '.join(elsewhere)}" if elsewhere else "search the catalogue below"
        raise UserError(f"{code.strip()} is not a code of {SYSTEM_LABELS.get(system, system)}; {hint}.")
    lines = [f"### {info.code} — {info.title}", f"System: {SYSTEM_LABELS.get(system, system)}"]
    if info.terminal:
        lines.append("✅ **kodierbar** (endständiger Kode)")
    else:
        subcodes = cat.terminal_descendants(info.code, system)
        listing = ", ".join(f"`{s.code}`" for s in subcodes[:25]) + (" …" if len(subcodes) > 25 else "")
        lines.append(f"❌ **nicht kodierbar** (Gruppe); kodierbare Unterkodes: {listing or '–'}")
    ancestors = cat.ancestors(info.code, system)
    if ancestors:
        lines.append("Übergeordnet: " + " › ".join(f"{a.code} {a.title}" for a in reversed(ancestors)))
    details = [f"Kapitel {info.chapter}" if info.chapter else "", f"Gruppe {info.block}" if info.block else "",
               f"Verhalten /{info.behaviour}" if info.behaviour else ""]
    if any(details):
        lines.append(" · ".join(d for d in details if d))
    return "\n\n".join(lines)


def build_catalogue_tab(models: Models) -> None:
    system_choices = [(label, s) for s, label in SYSTEM_LABELS.items()]
    gr.Markdown("#### Kode nachschlagen")
    with gr.Row():
        system = gr.Dropdown(system_choices, value="icd10gm", label="System", elem_id="lookup-system")
        code = gr.Textbox(label="Kode", placeholder="C50.4 · 8500/3", elem_id="lookup-code")
        lookup = gr.Button("Nachschlagen", elem_id="lookup-run")
    found = gr.Markdown(elem_id="lookup-result")
    gr.Markdown("#### Katalog durchsuchen")
    with gr.Row():
        query = gr.Textbox(label="Suchtext", placeholder="z. B. Oberlappen Bronchialkarzinom", scale=3,
                           elem_id="search-text")
        systems = gr.CheckboxGroup(system_choices, value=list(SYSTEM_LABELS), label="Systeme", scale=2)
        k = gr.Slider(1, 50, value=10, step=1, label="Treffer je System")
    search = gr.Button("Suchen", elem_id="search-run")
    status = gr.Markdown(elem_id="search-status")
    table = gr.Dataframe(headers=SEARCH_HEADERS, interactive=False, wrap=True, elem_id="search-table")

    def look_up(system, code):
        try:
            return describe_code(models.catalogue(), system, code)
        except UserError as exc:
            gr.Warning(str(exc))
            return f"⚠️ {exc}"

    def search_catalogue(text, systems, k):
        empty = pd.DataFrame(columns=SEARCH_HEADERS)
        try:
            if not systems:
                raise UserError("Choose at least one system to search.")
            loading = models.needs_loading("retrieval")
            if loading:
                gr.Info("Lade Modelle …")
            result = models.search(text, int(k), systems)
        except UserError as exc:
            return {**_fail(status, exc), table: empty}
        rows = [[SYSTEM_LABELS.get(s, s), c.code, c.title, c.matched, round(c.score, 4)]
                for s, cands in result.items() for c in cands]
        return {status: "", table: pd.DataFrame(rows, columns=SEARCH_HEADERS)}

    gr.on([lookup.click, code.submit], look_up, inputs=[system, code], outputs=[found])
    gr.on([search.click, query.submit], search_catalogue, inputs=[query, systems, k], outputs=[status, table])


# ---------------------------------------------------------------------- app
def build_app(coder: Coder | None = None, upload_dir: Path | None = None) -> gr.Blocks:
    """The demo over one Coder (a default one when none is given). Predictions files are written under
    `upload_dir` (default: a fresh folder in the system temp dir; Gradio serves files from there, the working
    directory and its own cache only)."""
    models = Models(coder or Coder(CoderConfig()))
    out_dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="oncocoder-ui-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="oncocoder", analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown("## oncocoder – ICD-10-GM- und ICD-O-3-Kodierung deutscher Tumordiagnosen\n"
                    "Forschungsdemo auf Basis der öffentlichen BfArM-Kataloge; nicht für die Routineversorgung.")
        with gr.Tab("Kodieren", id="code"):
            build_code_tab(models)
        with gr.Tab("Vergleich", id="compare"):
            build_compare_tab(models)
        with gr.Tab("Batch", id="batch"):
            build_batch_tab(models, out_dir)
        with gr.Tab("Katalog", id="catalogue"):
            build_catalogue_tab(models)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, coder: Coder | None = None, block: bool = True,
           upload_dir: Path | None = None) -> gr.Blocks:
    """Serve the demo on http://host:port. With block=False it returns at once (the caller closes the app)."""
    demo = build_app(coder, upload_dir)
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, allowed_paths=[],
                prevent_thread_lock=not block, ssr_mode=False, quiet=not block,
                run_history=False)  # no diagnosis texts kept in the browser's run history
    return demo
