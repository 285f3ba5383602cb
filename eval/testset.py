"""Test sets in the project's format: JSONL (or CSV with the same columns).

Columns: `id`, `text`, `icd10gm`, `icdo_topography`, `icdo_morphology`, `is_tumor`, optional `derivable`
(full | partial | ...) and `note`. A gold code may be null (a pure procedure text has no ICD-10-GM code, a
non-tumor text no ICD-O-3 codes). Gold codes are validated against the catalogues; invalid ones are reported and
not scored.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.files import sha256_file

DEV_SET = Path(__file__).resolve().parent / "data" / "tumor_diagnoses_dev.jsonl"
REQUIRED = ("id", "text", "icd10gm", "icdo_topography", "icdo_morphology", "is_tumor")
_TRUE = {"true", "1", "yes", "ja", "y", "j"}
_FALSE = {"false", "0", "no", "nein", "n"}


@dataclass
class TestRow:
    id: str
    text: str
    gold: dict[str, str | None]  # system -> code or None
    is_tumor: bool | None
    derivable: str | None = None
    note: str = ""
    invalid: dict[str, str] = field(default_factory=dict)  # system -> invalid gold code (not scored)


@dataclass
class TestSet:
    path: Path
    rows: list[TestRow]
    sha256: str
    problems: list[str] = field(default_factory=list)  # one sentence per reported row

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def has_derivable(self) -> bool:
        return any(r.derivable is not None for r in self.rows)


def _none_if_empty(v):
    if v is None:
        return None
    s = str(v).strip()
    return None if s == "" or s.lower() in ("null", "none", "nan") else s


def _bool(v, where: str) -> bool | None:
    if isinstance(v, bool):
        return v
    s = _none_if_empty(v)
    if s is None:
        return None
    if s.lower() in _TRUE:
        return True
    if s.lower() in _FALSE:
        return False
    raise ValueError(f"{where}: is_tumor must be true or false, not {v!r}")


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"The test set {path} does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UserError(f"The test set {path} is empty.")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"The test set {path} lacks the column(s) {', '.join(missing)}.")
        return list(reader)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"Line {n} of the test set {path} is not valid JSON ({exc.msg}).") from exc
        if not isinstance(obj, dict):
            raise UserError(f"Line {n} of the test set {path} is not a JSON object.")
        records.append(obj)
    missing = sorted({c for r in records for c in REQUIRED if c not in r})
    if missing:
        raise UserError(f"The test set {path} lacks the field(s) {', '.join(missing)} in some rows; every row needs "
                        f"{', '.join(REQUIRED)}.")
    return records


def load_testset(path: str | Path, catalogue=None, limit: int | None = None) -> TestSet:
    """Read and check a test set. Duplicate ids and empty texts are errors; invalid gold codes are reported."""
    from oncocoder.index.catalogue import load_catalogue, normalize_code

    path = Path(path)
    cat = catalogue or load_catalogue()
    records = _read_records(path)
    rows, problems, seen = [], [], set()
    for n, r in enumerate(records, 1):
        rid = _none_if_empty(r.get("id"))
        where = f"row {n} (id {rid})"
        if rid is None:
            raise UserError(f"Row {n} of the test set {path} has no id.")
        if rid in seen:
            raise UserError(f"The test set {path} has the id {rid} twice; ids must be unique.")
        seen.add(rid)
        text = _none_if_empty(r.get("text"))
        if text is None:
            raise UserError(f"Row {n} (id {rid}) of the test set {path} has an empty text.")
        try:
            is_tumor = _bool(r.get("is_tumor"), where)
        except ValueError as exc:
            raise UserError(f"In the test set {path}, {exc}.") from exc
        gold, invalid = {}, {}
        for system in config.SYSTEMS:
            code = _none_if_empty(r.get(system))
            if code is not None:
                code = normalize_code(code, system)
                if not cat.is_valid(code, system):
                    invalid[system] = code
                    problems.append(f"{where}: {system} gold code {code} is not a codable {system} code; not scored.")
                    code = None
            gold[system] = code
        rows.append(TestRow(str(rid), text, gold, is_tumor, _none_if_empty(r.get("derivable")),
                            str(r.get("note") or ""), invalid))
    if limit:
        rows = rows[:limit]
    digest = sha256_file(path)
    return TestSet(path, rows, digest, problems)
