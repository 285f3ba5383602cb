"""Files of diagnosis texts in and predictions out (shared by `oncocoder code --input` and the demo's batch tab).

Input: JSONL with `id` and `text` per line, or CSV with a `text` column (and optionally `id`). A row that cannot be
read becomes a row with an `error`, so the output keeps one line per input row, in input order.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable

from oncocoder.errors import UserError

MAX_ROWS = 100_000


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"The input file {path} does not exist.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = parse_csv(text, path.name)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = parse_jsonl(text)
    else:
        raise UserError(f"The input file {path.name} must be .jsonl (id, text per line) or .csv (a text column).")
    if not rows:
        raise UserError(f"The input file {path.name} holds no rows.")
    if len(rows) > MAX_ROWS:
        raise UserError(f"The input file {path.name} has {len(rows)} rows; split it into files of at most {MAX_ROWS}.")
    return rows


def parse_jsonl(text: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            rows.append({"id": n, "text": None, "error": f"Line {n} is not valid JSON."})
            continue
        if not isinstance(obj, dict):
            rows.append({"id": n, "text": None, "error": f"Line {n} is not a JSON object."})
        elif not isinstance(obj.get("text"), str):
            rows.append({"id": obj.get("id", n), "text": None, "error": f"Line {n} has no text field."})
        else:
            rows.append({"id": obj.get("id", n), "text": obj["text"]})
    return rows


def parse_csv(text: str, name: str = "the CSV file") -> list[dict]:
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "text" not in fields:
        raise UserError(f"{name} has no `text` column (columns found: {', '.join(reader.fieldnames or []) or 'none'}).")
    rows = []
    for n, rec in enumerate(reader, 1):
        rec = {(k or "").strip().lower(): v for k, v in rec.items()}
        rows.append({"id": rec.get("id") or n, "text": rec.get("text")})
    return rows


def code_file(coder, rows: list[dict], out_path: str | Path, mode: str | None = None,
              progress: Callable[[int], None] | None = None) -> dict:
    """Code every row and write one JSON prediction per line, in input order. Returns a summary."""
    t0 = time.perf_counter()
    preds = coder.code_batch(rows, mode=mode, progress=progress)
    with open(out_path, "w", encoding="utf-8") as f:
        for p in preds:
            f.write(p.model_dump_json() + "\n")
    seconds = time.perf_counter() - t0
    errors = sum(p.error is not None for p in preds)
    return {"rows": len(preds), "errors": errors, "seconds": round(seconds, 2),
            "texts_per_second": round(len(preds) / seconds, 2) if seconds else None}
