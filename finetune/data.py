"""Instruction data from the public catalogues (the recipe of arXiv 2510.13624), plus a RAG format.

`build_dataset(DataConfig(...))` writes into one folder:
- `plain.jsonl`: question -> bare answer, the paper's format. Tasks: `icd10gm` (every ICD-10-GM term -> its code),
  `icdo_topography` (ICD-O-3 topography terms, and ICD-10-GM tumor terms whose topography follows from the code by
  the documented conventions in `data/topography_conventions.tsv`), `icdo_morphology` (ICD-O-3 morphology terms
  -> code with behaviour; non-tumor terms -> `keine`), `is_tumor` (ja/nein, 40 % positive, hard negatives from
  `data/hard_negative_words.txt` oversampled) and `title` (code -> catalogue title).
- `rag.jsonl`: the same questions with the candidates of the real retrieval index as lettered options; the answer
  is the letter of the gold option (the tumor question stays in plain form).
- `heldout.jsonl`: terms of held-out 3-character categories, in the project's test-set format; none of their terms
  appears in any training file.
- `README.md` and `stats.json`: the dataset card (counts, leakage exclusions, catalogue hashes, timings).

Answers are exactly what the agent's constrained decoder produces, and every question comes from
`oncocoder.agent.prompts`, so training and inference ask the same way. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import re
import resource
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from oncocoder import config
from oncocoder.agent import prompts
from oncocoder.agent.coder import TUMOR_CHAPTER, CoderConfig
from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue, load_catalogue
from oncocoder.index.crosswalk import load_conventions, topography_for
from oncocoder.index.normalize import Abbreviations, fold, load_abbreviations

GENERATOR_VERSION = "1"
TASKS = ("icd10gm", "icdo_topography", "icdo_morphology", "is_tumor", "title")
RAG_TASKS = ("icd10gm", "icdo_topography", "icdo_morphology", "is_tumor")
TASK_SYSTEM = {"icd10gm": "icd10gm", "icdo_topography": "icdo_topography", "icdo_morphology": "icdo_morphology"}

DATA_DIR = Path(__file__).resolve().parent / "data"
HARD_NEGATIVES_FILE = DATA_DIR / "hard_negative_words.txt"

# Recipe constants (the tunable ones are DataConfig fields).
OTHER_WEIGHT = 3  # templates per non-tumor term (tumor terms get DataConfig.tumor_weight)
KEINE_SHARE = 0.05  # share of `keine` answers among the morphology examples
TUMOR_SHARE = 0.40  # share of positives in the is_tumor task
HARD_NEGATIVE_WEIGHT = 3  # templates per hard negative; ordinary negatives get ORDINARY_NEGATIVE_WEIGHT
ORDINARY_NEGATIVE_WEIGHT = 2
HARD_NEGATIVE_MAX_SHARE = 0.5  # at most this share of the negatives are hard ones
NOT_A_TUMOR_QUESTION = ("Z08", "Z86.0")  # follow-up after / history of other neoplasms: neither ja nor nein
RAG_SHARES = {"icd10gm": 0.45, "icdo_topography": 0.20, "icdo_morphology": 0.20, "is_tumor": 0.15}
RAG_ICD_TUMOR_SHARE = 0.5  # share of the RAG icd10gm examples taken from chapter II
RAG_EXTRA = 5  # candidates fetched beyond k, to replace candidates of held-out codes
RAG_MAX_ROUNDS = 20  # passes over a term pool (each with new templates) before a RAG task gives up
SEARCH_BATCH = 64

# Words that name a tumor outright; a non-tumor term with one of them never becomes a `keine` example.
_TUMOR_WORDS = re.compile(r"karzinom|carcinom|sarkom|lymphom|leukaemi|melanom|blastom|adenom|neoplas|neubildung|"
                          r"tumor|myelom|gliom|zytom\b|karzinoid|metasta|malign|boesartig|histolog|dignitaet")
_PUNCT = re.compile(r"[^\w]+")


# ----------------------------------------------------------------------------------------- configuration

def default_out() -> Path:
    return config.cache_dir() / "data" / "v1"


@dataclass(frozen=True)
class DataConfig:
    out: Path = field(default_factory=default_out)
    limit: int | None = None  # max pairs per format
    tasks: tuple[str, ...] = TASKS
    exclude: tuple[Path, ...] = ()  # test sets whose texts must not appear (the dev set is always added)
    seed: int = 13
    rag: bool = True
    rag_size: int = 60000
    rag_inject_share: float = 0.5  # of the RAG examples whose gold retrieval missed: share with the gold inserted
    heldout_share: float = 0.03  # of the 3-character ICD-10-GM categories
    heldout_rows: int = 300
    force: bool = False
    tumor_weight: int = 5  # templates per tumor term (others: OTHER_WEIGHT)
    abbreviate_share: float = 0.3  # of tumor terms that also get an abbreviated variant

    def rng(self, *names: object) -> random.Random:
        """An independent, seeded random stream per purpose."""
        return random.Random(":".join([str(self.seed), *map(str, names)]))


def add_arguments(parser) -> None:
    """The flags of `oncocoder data build`."""
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <cache>/data/v1)")
    parser.add_argument("--limit", type=int, default=None, help="at most N pairs per format (sampled per task)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"tasks to build (default: all of {', '.join(TASKS)})")
    parser.add_argument("--exclude", nargs="+", default=[], type=Path, metavar="FILE",
                        help="test sets whose texts must not occur in the data (the dev set is always excluded)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default: %(default)s)")
    parser.add_argument("--no-rag", action="store_true", help="build the plain format only (no retrieval)")
    parser.add_argument("--rag-size", type=int, default=DataConfig.rag_size,
                        help="RAG examples to build (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output folder")


def from_args(args) -> DataConfig:
    return DataConfig(out=Path(args.out) if args.out else default_out(), limit=args.limit, tasks=tuple(args.tasks),
                      exclude=tuple(Path(p) for p in args.exclude), seed=args.seed, rag=not args.no_rag,
                      rag_size=getattr(args, "rag_size", DataConfig.rag_size), force=args.force)


def check_config(cfg: DataConfig) -> None:
    if cfg.limit is not None and cfg.limit <= 0:
        raise UserError(f"--limit must be a positive number of pairs (got {cfg.limit}); leave it out for all pairs.")
    if not cfg.tasks:
        raise UserError(f"--tasks is empty; choose from {', '.join(TASKS)}.")
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise UserError(f"Unknown task {unknown[0]!r} in --tasks; choose from {', '.join(TASKS)}.")
    if cfg.rag and cfg.rag_size < 1:
        raise UserError(f"--rag-size must be at least 1 (got {cfg.rag_size}); use --no-rag for no RAG file.")
    if cfg.tumor_weight < 1 or cfg.heldout_rows < 0:
        raise UserError("tumor_weight must be at least 1 and heldout_rows at least 0.")
    for name in ("rag_inject_share", "heldout_share", "abbreviate_share"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise UserError(f"{name} must lie between 0 and 1 (got {getattr(cfg, name)}).")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"The output path {out} is a file; give a folder with --out.")
    if out.is_dir() and any(out.iterdir()) and not cfg.force:
        raise UserError(f"The output folder {out} is not empty; pass --force to overwrite it or choose another --out.")


# ----------------------------------------------------------------------------------------- pure helpers

@lru_cache(maxsize=1 << 19)
def normalize_text(text: str) -> str:
    """The form used for the leakage guard: lower case, umlauts folded, punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", fold(text)).replace("_", " ").split())


def _looks_like_abbreviation(abbreviation: str, expansion: str, note: str) -> bool:
    """Table rows that write a clinician's abbreviation (not an English word or a spelling variant)."""
    note = note.lower()
    if not expansion or len(abbreviation) >= len(expansion) or any(c.isspace() for c in abbreviation):
        return False
    if note.startswith(("english", "british")) or "spelling variant" in note:
        return False
    upper = sum(c.isupper() for c in abbreviation)
    return abbreviation.endswith(".") or upper >= 2 or (
        upper >= 1 and len(abbreviation) <= 4 and len(expansion) >= 2 * len(abbreviation))


_COMPOUND_CATEGORIES = ("histology", "entity", "status", "general")


@dataclass(frozen=True)
class _ReverseTable:
    pattern: re.Pattern
    compound: re.Pattern | None
    whole: dict[str, tuple[str, ...]]  # lower-case expansion -> abbreviations (table order)
    suffix: dict[str, tuple[str, ...]]  # lower-case one-word expansion -> abbreviations usable after a hyphen


@lru_cache(maxsize=4)
def _reverse_table(table: Abbreviations) -> _ReverseTable | None:
    whole: dict[str, list[str]] = {}
    suffix: dict[str, list[str]] = {}
    for r in table.rows:
        if not _looks_like_abbreviation(r.abbreviation, r.expansion, r.note):
            continue
        key = r.expansion.lower()
        whole.setdefault(key, []).append(r.abbreviation)
        if r.category in _COMPOUND_CATEGORIES and re.fullmatch(r"[A-ZÄÖÜ][^\W\d_]{3,}", r.expansion):
            suffix.setdefault(key, []).append(r.abbreviation)
    if not whole:
        return None
    by_length = lambda keys: "|".join(re.escape(k) for k in sorted(keys, key=lambda s: (-len(s), s)))  # noqa: E731
    word = r"[^\W\d_]{3,}?"
    alternatives = [f"(?P<whole>{by_length(whole)})"]
    if suffix:
        alternatives.append(f"(?P<prefix>{word})(?P<suffix>{by_length(suffix)})")
    pattern = re.compile(r"(?<![\w-])(?:" + "|".join(alternatives) + r")(?![\w-])", re.IGNORECASE)
    compound = re.compile(f"({word})({by_length(suffix)})", re.IGNORECASE) if suffix else None
    return _ReverseTable(pattern, compound, {k: tuple(v) for k, v in whole.items()},
                         {k: tuple(v) for k, v in suffix.items()})


def abbreviate(text: str, table: Abbreviations | None = None, rng: random.Random | None = None) -> str:
    """The text written the way clinicians abbreviate: the abbreviation table applied in reverse.

    A phrase that a table row expands to becomes its abbreviation ("akute myeloische Leukämie" -> "AML",
    "Zustand nach" -> "Z.n."); a compound ending in a one-word histology/entity/status expansion becomes
    prefix-hyphen-abbreviation ("Mammakarzinom" -> "Mamma-Ca", "Lebermetastase" -> "Leber-Met."). Only rows that
    look like abbreviations are used (no English words, no spelling variants). Where several abbreviations fit,
    `rng` chooses (the first in table order without one). The text comes back unchanged when nothing applies."""
    rev = _reverse_table(table or load_abbreviations())
    if rev is None:
        return text

    def pick(options: list[str]) -> str:
        return options[0] if rng is None else rng.choice(options)

    def replace(m: re.Match) -> str:
        if m.group("whole") is not None:
            matched = m.group("whole")
            options = [*rev.whole[matched.lower()]]
            parts = rev.compound.fullmatch(matched) if rev.compound and " " not in matched else None
            if parts:
                options += [f"{parts.group(1)}-{a}" for a in rev.suffix[parts.group(2).lower()]]
            return pick(options)
        return f"{m.group('prefix')}-{pick(list(rev.suffix[m.group('suffix').lower()]))}"

    return " ".join(rev.pattern.sub(replace, text).split())


# ----------------------------------------------------------------------------------------- topography conventions

# ----------------------------------------------------------------------------------------- hard negatives

@dataclass(frozen=True)
class HardNegativeRules:
    words: tuple[str, ...]
    suffixes: tuple[str, ...]
    stop: tuple[str, ...]
    codes: tuple[str, ...]

    def matches(self, text: str, code: str | None = None) -> bool:
        if code and code.startswith(self.codes):
            return True
        t = fold(text)
        if any(w in t for w in self.words):
            return True
        if self.suffixes:
            for token in re.findall(r"[^\W\d_]+", t):
                if token.endswith(self.suffixes) and not any(s in token for s in self.stop):
                    return True
        return False


def load_hard_negative_rules(path: Path = HARD_NEGATIVES_FILE) -> HardNegativeRules:
    return _load_hard_negative_rules(str(path))


@lru_cache(maxsize=4)
def _load_hard_negative_rules(path: str) -> HardNegativeRules:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise UserError(f"The hard-negative word list {path} is missing; reinstall the package.") from exc
    words, suffixes, stop, codes = [], [], [], []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.startswith("code:"):
            codes.append(entry[5:].strip())
        elif entry.startswith("-"):
            suffixes.append(fold(entry[1:]))
        elif entry.startswith("!"):
            stop.append(fold(entry[1:]))
        else:
            words.append(fold(entry))
    return HardNegativeRules(tuple(words), tuple(suffixes), tuple(stop), tuple(codes))


def tumor_label(code: str, cat: Catalogue) -> bool | None:
    """Is a term of this ICD-10-GM code a tumor diagnosis? True for chapter II (C00-D48) and Z85 (malignancy in the
    history), None where the question has no clear answer (follow-up after a tumor, history of other neoplasms),
    False otherwise."""
    info = cat.info(code, "icd10gm")
    if (info is not None and info.chapter == TUMOR_CHAPTER) or code.startswith("Z85"):
        return True
    if code.startswith(NOT_A_TUMOR_QUESTION):
        return None
    return False


# ----------------------------------------------------------------------------------------- records

@dataclass(slots=True)
class Example:
    task: str
    text: str  # what the question shows: a diagnosis text (for `title`: the code)
    answer: str  # plain format: the answer; RAG: set from the options
    code: str | None  # gold code (None for is_tumor and `keine`)
    system: str | None  # the coding system of `code`
    source: str  # catalogue file and entry kind, e.g. "alphaidse2025:synonym"
    template: int
    augmented: str | None = None
    term: str = ""  # the catalogue term behind the example (for `title`: the title)
    term_code: str | None = None  # the ICD-10-GM code of the term, if it is an ICD-10-GM term
    chapter: str = ""  # ICD-10-GM chapter of the term
    fmt: str = "plain"
    options: tuple[prompts.Option, ...] | None = None
    gold_retrieved: bool | None = None
    gold_position: int | None = None
    question_key: str | None = None  # the prompts.QUESTIONS entry when it is not named like the task

    def user(self) -> str:
        key = self.question_key or self.task
        if self.fmt == "rag" and self.options is not None:
            return prompts.rag_question(key, self.text, list(self.options), self.template)
        return prompts.question(key, self.text, self.template)

    def to_json(self) -> str:
        obj = {"messages": prompts.messages(self.user(), self.answer), "task": self.task, "system": self.system,
               "code": self.code, "source": self.source, "template": self.template, "format": self.fmt,
               "augmented": self.augmented}
        if self.fmt == "rag":
            obj["gold_retrieved"] = self.gold_retrieved
            obj["gold_position"] = self.gold_position
        return json.dumps(obj, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _Term:
    text: str
    code: str
    source: str
    chapter: str = ""
    category: str = ""


class _Guard:
    """Which texts and codes must not reach a training file: test-set texts (leakage) and held-out terms."""

    def __init__(self, test_texts: set[str], heldout_texts: set[str], heldout_categories: set[str]):
        self.test_texts, self.heldout_texts, self.heldout_categories = test_texts, heldout_texts, heldout_categories
        self.leakage: Counter = Counter()  # format -> pairs dropped
        self.heldout: Counter = Counter()

    def reason(self, texts: tuple[str, ...], icd_code: str | None) -> str | None:
        norms = {normalize_text(t) for t in texts if t}
        if norms & self.test_texts:
            return "leakage"
        if norms & self.heldout_texts or (icd_code and icd_code[:3] in self.heldout_categories):
            return "heldout"
        return None

    def check(self, ex: Example) -> bool:
        reason = self.reason((ex.text, ex.term), ex.term_code or (ex.code if ex.system == "icd10gm" else None))
        if reason == "leakage":
            self.leakage[ex.fmt] += 1
        elif reason == "heldout":
            self.heldout[ex.fmt] += 1
        return reason is None


# ----------------------------------------------------------------------------------------- the term pools

class _Pools:
    """The catalogue terms every generator draws from, computed once."""

    def __init__(self, cat: Catalogue, cfg: DataConfig):
        self.cat, self.cfg = cat, cfg
        self.conventions = load_conventions()
        self.hard = load_hard_negative_rules()
        self.abbreviations = load_abbreviations()
        self.icd = self._distinct(e for e in cat.entries_of("icd10gm") if cat.is_valid(e.code, "icd10gm"))
        self.codes_of_text: dict[str, set[str]] = defaultdict(set)
        for t in self.icd:
            self.codes_of_text[normalize_text(t.text)].add(t.code)
        self.topography = self._distinct(e for e in cat.entries_of("icdo_topography")
                                         if cat.is_valid(e.code, "icdo_topography"))
        self.morphology = self._distinct(e for e in cat.entries_of("icdo_morphology")
                                         if cat.is_valid(e.code, "icdo_morphology"))
        self.ops = self._distinct(cat.entries_of("ops")) if "ops" in cat.systems else []
        self._labels: dict[str, bool | None] = {}
        self.guard: _Guard | None = None  # set by build_dataset; lets the is_tumor balance count kept terms only

    def kept(self, t: _Term, icd_code: str | None) -> bool:
        return self.guard is None or self.guard.reason((t.text,), icd_code) is None

    @staticmethod
    def _distinct(entries) -> list[_Term]:
        seen, out = set(), []
        for e in entries:
            key = (normalize_text(e.text), e.code)
            if key[0] and key not in seen:
                seen.add(key)
                out.append(_Term(e.text, e.code, f"{e.source}:{e.kind}", e.chapter, e.category))
        return out

    def label(self, text: str) -> bool | None:
        """Tumor label of a text over all its ICD-10-GM codes: True if any code is a tumor code."""
        key = normalize_text(text)
        if key not in self._labels:
            labels = {tumor_label(c, self.cat) for c in self.codes_of_text.get(key, ())}
            self._labels[key] = True if True in labels else (None if None in labels or not labels else False)
        return self._labels[key]

    def is_tumor_term(self, t: _Term) -> bool:
        return t.chapter == TUMOR_CHAPTER

    def derived_topography(self) -> list[tuple[_Term, str]]:
        """ICD-10-GM tumor terms with the topography their code implies (texts with conflicting results left out)."""
        if "_derived" not in self.__dict__:
            self._derived = self._derive_topography()
        return self._derived

    def _derive_topography(self) -> list[tuple[_Term, str]]:
        found: dict[str, set[str]] = defaultdict(set)
        pairs = []
        for t in self.icd:
            if t.chapter != TUMOR_CHAPTER:
                continue
            topo = topography_for(t.code, self.cat, self.conventions)
            if topo:
                found[normalize_text(t.text)].add(topo)
                pairs.append((t, topo))
        seen, out = set(), []
        for t, topo in pairs:
            key = normalize_text(t.text)
            if len(found[key]) == 1 and key not in seen:
                seen.add(key)
                out.append((t, topo))
        return out

    def keine_pool(self) -> list[_Term]:
        """Clearly non-tumor ICD-10-GM terms (no tumor word, no tumor-like word): no histology to code."""
        if "_keine" not in self.__dict__:
            self._keine = self._keine_pool()
        return self._keine

    def _keine_pool(self) -> list[_Term]:
        out, seen = [], set()
        for t in self.icd:
            key = normalize_text(t.text)
            if key in seen or t.chapter == TUMOR_CHAPTER or self.label(t.text) is not False:
                continue
            seen.add(key)
            if not _TUMOR_WORDS.search(fold(t.text)) and not self.hard.matches(t.text, t.code):
                out.append(t)
        return out


def _templates(task: str) -> int:
    return len(prompts.QUESTIONS[task])


def _variants(rng: random.Random, task: str, weight: int) -> list[int]:
    """Distinct template indices for one (term, task), chosen by the seeded RNG."""
    n = _templates(task)
    return rng.sample(range(n), min(weight, n))


def _maybe_abbreviated(pools: _Pools, rng: random.Random, text: str) -> str | None:
    if rng.random() >= pools.cfg.abbreviate_share:
        return None
    short = abbreviate(text, pools.abbreviations, rng)
    return short if short != text else None


def _with_abbreviation(pools: _Pools, rng: random.Random, ex: Example) -> list[Example]:
    """The example, plus its abbreviated variant for a share of tumor terms."""
    short = _maybe_abbreviated(pools, rng, ex.term)
    if short is None:
        return []
    return [Example(ex.task, short, ex.answer, ex.code, ex.system, ex.source, rng.randrange(_templates(ex.task)),
                    "abbreviated", ex.term, ex.term_code, ex.chapter)]


# ----------------------------------------------------------------------------------------- plain generators

def _progress(items, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="term", disable=not progress, leave=False)


def gen_icd10gm(pools: _Pools, progress: bool = False) -> list[Example]:
    rng, cfg, out = pools.cfg.rng("icd10gm"), pools.cfg, []
    for t in _progress(pools.icd, progress, "icd10gm"):
        tumor = pools.is_tumor_term(t)
        for v in _variants(rng, "icd10gm", cfg.tumor_weight if tumor else OTHER_WEIGHT):
            out.append(Example("icd10gm", t.text, t.code, t.code, "icd10gm", t.source, v, None, t.text, t.code,
                               t.chapter))
        if tumor:
            out += _with_abbreviation(pools, rng, out[-1])
    return out


def gen_topography(pools: _Pools, progress: bool = False) -> list[Example]:
    rng, cfg, out = pools.cfg.rng("icdo_topography"), pools.cfg, []
    items = [(t, t.code, t.source, None, "") for t in pools.topography]
    items += [(t, topo, f"{t.source}>topography_conventions", t.code, t.chapter)
              for t, topo in pools.derived_topography()]
    for t, topo, source, icd_code, chapter in _progress(items, progress, "icdo_topography"):
        for v in _variants(rng, "icdo_topography", cfg.tumor_weight):
            out.append(Example("icdo_topography", t.text, topo, topo, "icdo_topography", source, v, None, t.text,
                               icd_code, chapter))
        out += _with_abbreviation(pools, rng, out[-1])
    return out


def gen_morphology(pools: _Pools, progress: bool = False) -> list[Example]:
    rng, cfg, out = pools.cfg.rng("icdo_morphology"), pools.cfg, []
    for t in _progress(pools.morphology, progress, "icdo_morphology"):
        for v in _variants(rng, "icdo_morphology", cfg.tumor_weight):
            out.append(Example("icdo_morphology", t.text, t.code, t.code, "icdo_morphology", t.source, v, None,
                               t.text))
    n_keine = round(len(out) * KEINE_SHARE / (1 - KEINE_SHARE))
    pool = pools.keine_pool()
    for t in rng.sample(pool, min(n_keine, len(pool))):
        out.append(Example("icdo_morphology", t.text, prompts.NO_MORPHOLOGY, None, None, t.source,
                           rng.randrange(_templates("icdo_morphology")), None, t.text, t.code, t.chapter))
    return out


def _is_tumor_terms(pools: _Pools) -> tuple[list[tuple[_Term, str | None]], list[tuple[_Term, str | None]]]:
    """(positives, negatives): distinct texts with the ICD-10-GM code they came from (None for ICD-O/OPS terms)."""
    pos, neg, seen = [], [], set()
    for t in pools.icd:
        key = normalize_text(t.text)
        if key in seen:
            continue
        seen.add(key)
        label = pools.label(t.text)
        if label is True:
            pos.append((t, t.code))
        elif label is False:
            neg.append((t, t.code))
    for t in pools.morphology:
        key = normalize_text(t.text)
        behaviour = t.code.rsplit("/", 1)[-1]
        if key not in seen and behaviour in ("0", "1", "2", "3"):
            seen.add(key)
            pos.append((t, None))
    for t in pools.ops:
        key = normalize_text(t.text)
        if key not in seen:
            seen.add(key)
            neg.append((t, None))
    return pos, neg


def gen_is_tumor(pools: _Pools, progress: bool = False) -> list[Example]:
    rng, cfg, out = pools.cfg.rng("is_tumor"), pools.cfg, []
    positives, negatives = _is_tumor_terms(pools)
    negatives = [(t, c) for t, c in negatives if pools.kept(t, c)]

    def add(t: _Term, icd_code: str | None, answer: str, weight: int) -> None:
        for v in _variants(rng, "is_tumor", weight):
            out.append(Example("is_tumor", t.text, answer, None, None, t.source, v, None, t.text, icd_code,
                               t.chapter if icd_code else ""))

    for t, icd_code in _progress(positives, progress, "is_tumor +"):
        add(t, icd_code, prompts.YES, cfg.tumor_weight)
        out += _with_abbreviation(pools, rng, out[-1])
    kept = sum(1 for ex in out if pools.kept(_Term(ex.term, "", ""), ex.term_code) and
               (ex.augmented is None or pools.kept(_Term(ex.text, "", ""), None)))
    need = round(kept * (1 - TUMOR_SHARE) / TUMOR_SHARE)
    hard = [(t, c) for t, c in negatives if t.source.startswith("ops") or pools.hard.matches(t.text, c)]
    hard_keys = {id(t) for t, _ in hard}
    ordinary = [(t, c) for t, c in negatives if id(t) not in hard_keys]
    hard_weight = min(HARD_NEGATIVE_WEIGHT, _templates("is_tumor"))
    max_hard = int(need * HARD_NEGATIVE_MAX_SHARE) // hard_weight
    if len(hard) > max_hard:
        hard = rng.sample(hard, max_hard)
    start = len(out)
    for t, icd_code in _progress(hard, progress, "is_tumor hard -"):
        add(t, icd_code, prompts.NO, hard_weight)
    rest = max(0, need - (len(out) - start))
    weight = ORDINARY_NEGATIVE_WEIGHT if rest <= ORDINARY_NEGATIVE_WEIGHT * len(ordinary) else _templates("is_tumor")
    n_terms = min(len(ordinary), -(-rest // weight))
    for t, icd_code in _progress(rng.sample(ordinary, n_terms), progress, "is_tumor -"):
        add(t, icd_code, prompts.NO, weight)
    return out


def title_systems() -> dict[str, str]:
    """Systems with a code -> title question in prompts.py: ICD-10-GM (`title`), and any ICD-O-3 system for which
    prompts.QUESTIONS has a `title_<system>` entry (none so far: the `title` questions name ICD-10-GM)."""
    out = {"icd10gm": "title"}
    for system in ("icdo_topography", "icdo_morphology"):
        if f"title_{system}" in prompts.QUESTIONS:
            out[system] = f"title_{system}"
    return out


def gen_title(pools: _Pools, progress: bool = False) -> list[Example]:
    rng, cfg, cat, out = pools.cfg.rng("title"), pools.cfg, pools.cat, []
    for system, question_task in title_systems().items():
        source = "icd10gm2025" if system == "icd10gm" else "icdo3"
        for info in _progress(list(cat.codes.get(system, {}).values()), progress, f"title {system}"):
            weight = cfg.tumor_weight if info.chapter == TUMOR_CHAPTER else OTHER_WEIGHT
            for v in _variants(rng, question_task, weight):
                out.append(Example("title", info.code, info.title, info.code, system, f"{source}:title", v, None,
                                   info.title, info.code if system == "icd10gm" else None, info.chapter,
                                   question_key=question_task))
    return out


GENERATORS = {"icd10gm": gen_icd10gm, "icdo_topography": gen_topography, "icdo_morphology": gen_morphology,
              "is_tumor": gen_is_tumor, "title": gen_title}


# ----------------------------------------------------------------------------------------- held-out split

def select_heldout_categories(cat: Catalogue, cfg: DataConfig) -> list[str]:
    """A seeded sample of `heldout_share` of the 3-character ICD-10-GM categories, stratified by chapter; chapter II
    by kind (malignant, in situ, benign, uncertain), each kind giving at least one category."""
    strata: dict[str, set[str]] = defaultdict(set)
    for info in cat.codes["icd10gm"].values():
        if info.terminal:
            strata[_heldout_stratum(info.chapter, info.category)].add(info.category)
    rng, out = cfg.rng("heldout"), []
    for stratum in sorted(strata):
        cats = sorted(strata[stratum])
        n = min(len(cats), round(cfg.heldout_share * len(cats)))
        if stratum.startswith(TUMOR_CHAPTER) and cfg.heldout_share > 0:
            n = max(1, n)
        out += rng.sample(cats, n)
    return sorted(out)


def _heldout_stratum(chapter: str, category: str) -> str:
    """The chapter; chapter II split into malignant (C), in situ (D00-D09), benign (D10-D36) and uncertain (D37-D48)
    so that each kind of tumor category is held out."""
    if chapter != TUMOR_CHAPTER:
        return chapter
    if category.startswith("C"):
        return f"{chapter}:malignant"
    return f"{chapter}:" + ("in situ" if category < "D10" else "benign" if category < "D37" else "uncertain")


def heldout_rows(pools: _Pools, categories: list[str], cfg: DataConfig) -> list[dict]:
    """Up to cfg.heldout_rows terms of the held-out categories in the test-set format: unambiguous texts only (one
    code in the whole catalogue, not the title of another code of the category), half of them tumor terms."""
    cat, cats = pools.cat, set(categories)
    titles_by_category: dict[str, dict[str, str]] = defaultdict(dict)
    for info in cat.codes["icd10gm"].values():
        if info.category in cats:
            titles_by_category[info.category][normalize_text(info.title)] = info.code
    tumor, other, seen = [], [], set()
    for t in pools.icd:
        if t.category not in cats:
            continue
        key = normalize_text(t.text)
        if key in seen or len(pools.codes_of_text[key]) != 1 or tumor_label(t.code, cat) is None:
            continue
        if titles_by_category[t.category].get(key, t.code) != t.code:
            continue
        seen.add(key)
        (tumor if t.chapter == TUMOR_CHAPTER else other).append(t)
    rng = cfg.rng("heldout-rows")
    n_tumor = min(len(tumor), max(cfg.heldout_rows // 2, cfg.heldout_rows - len(other)))
    chosen = rng.sample(tumor, n_tumor)
    chosen += rng.sample(other, min(len(other), cfg.heldout_rows - n_tumor))
    chosen.sort(key=lambda t: (t.code, t.text))
    rows = []
    for i, t in enumerate(chosen, 1):
        is_tumor = bool(tumor_label(t.code, cat))
        topo = topography_for(t.code, cat, pools.conventions) if t.chapter == TUMOR_CHAPTER else None
        rows.append({"id": f"HO-{i:04d}", "text": t.text, "icd10gm": t.code, "icdo_topography": topo,
                     "icdo_morphology": None, "is_tumor": is_tumor, "derivable": "full",
                     "note": f"held-out catalogue term ({t.source})"})
    return rows


# ----------------------------------------------------------------------------------------- retrieval (RAG)

def batched_search(retriever, texts: list[str], system: str, k: int) -> list[list]:
    """`retriever.search(text, k, systems=[system])[system]` for many texts, in batches of SEARCH_BATCH."""
    out = []
    for i in range(0, len(texts), SEARCH_BATCH):
        out += [r[system] for r in retriever.search_many(texts[i:i + SEARCH_BATCH], k, systems=[system])]
    return out


@dataclass
class _RagItem:
    text: str
    gold: str  # a code, or prompts.NO_MORPHOLOGY
    source: str
    term: str
    term_code: str | None = None
    chapter: str = ""
    augmented: str | None = None


class _RagBuilder:
    def __init__(self, pools: _Pools, guard: _Guard, retriever, progress: bool):
        self.pools, self.guard, self.retriever, self.progress = pools, guard, retriever, progress
        self.cfg = pools.cfg
        self.k = dict(CoderConfig().k)
        self.cache: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self.stats = Counter()
        self.positions: Counter = Counter()
        self.search_seconds = 0.0

    # -- pools
    def _item(self, t: _Term, gold: str, source: str | None = None, term_code: str | None = None,
              chapter: str = "") -> _RagItem:
        return _RagItem(t.text, gold, source or t.source, t.text, term_code, chapter)

    def _allowed(self, item: _RagItem) -> bool:
        reason = self.guard.reason((item.text, item.term), item.term_code)
        if reason:
            (self.guard.leakage if reason == "leakage" else self.guard.heldout)["rag_pool_terms"] += 1
        return reason is None

    def _abbreviated(self, items: list[_RagItem], rng: random.Random) -> list[_RagItem]:
        out = []
        for it in items:
            short = _maybe_abbreviated(self.pools, rng, it.term)
            if short:
                out.append(_RagItem(short, it.gold, it.source, it.term, it.term_code, it.chapter, "abbreviated"))
        return out

    def pools_for(self, task: str) -> list[tuple[str, list[_RagItem], float]]:
        """(stratum, items, share of the task's quota)."""
        p, rng = self.pools, self.cfg.rng("rag-pool", task)
        if task == "icd10gm":
            tumor = [self._item(t, t.code, term_code=t.code, chapter=t.chapter) for t in p.icd
                     if t.chapter == TUMOR_CHAPTER]
            other = [self._item(t, t.code, term_code=t.code, chapter=t.chapter) for t in p.icd
                     if t.chapter != TUMOR_CHAPTER]
            tumor += self._abbreviated(tumor, rng)
            return [("tumor", tumor, RAG_ICD_TUMOR_SHARE), ("other", other, 1 - RAG_ICD_TUMOR_SHARE)]
        if task == "icdo_topography":
            items = [self._item(t, t.code) for t in p.topography]
            items += [self._item(t, topo, f"{t.source}>topography_conventions", t.code, t.chapter)
                      for t, topo in p.derived_topography()]
            return [("all", items + self._abbreviated(items, rng), 1.0)]
        if task == "icdo_morphology":
            items = [self._item(t, t.code) for t in p.morphology]
            keine = [self._item(t, prompts.NO_MORPHOLOGY, term_code=t.code, chapter=t.chapter)
                     for t in p.keine_pool()]
            return [("histology", items, 1 - KEINE_SHARE), ("keine", keine, KEINE_SHARE)]
        raise ValueError(task)

    # -- retrieval
    def _candidates(self, system: str, items: list[_RagItem]) -> None:
        todo = sorted({it.text for it in items if (system, it.text) not in self.cache})
        if not todo:
            return
        t0 = time.perf_counter()
        fetched = batched_search(self.retriever, todo, system, self.k[system] + RAG_EXTRA)
        self.search_seconds += time.perf_counter() - t0
        self.stats["searches"] += len(todo)
        for text, cands in zip(todo, fetched):
            self.cache[(system, text)] = tuple((c.code, c.title) for c in cands)

    def _usable(self, system: str, code: str, title: str) -> bool:
        """Held-out codes (and titles equal to held-out terms) never appear as options."""
        if system == "icd10gm" and code[:3] in self.guard.heldout_categories:
            return False
        return normalize_text(title) not in self.guard.heldout_texts

    def _example(self, task: str, item: _RagItem, rng: random.Random) -> Example | None:
        system, k = TASK_SYSTEM[task], self.k[TASK_SYSTEM[task]]
        ranked = [(c, t) for c, t in self.cache[(system, item.text)] if self._usable(system, c, t)][:k]
        codes = [c for c, _ in ranked]
        template = rng.randrange(_templates(task))
        keine = item.gold == prompts.NO_MORPHOLOGY
        retrieved = keine or item.gold in codes
        opts = [prompts.Option(c, t) for c, t in ranked]
        rng.shuffle(opts)
        if not retrieved:
            if rng.random() >= self.cfg.rag_inject_share:
                self.stats[f"{task}:dropped"] += 1
                return None
            opts = [o for o in opts if o.code != ranked[-1][0]] if len(ranked) >= k else opts
            opts.insert(rng.randrange(len(opts) + 1),
                        prompts.Option(item.gold, self.pools.cat.title(item.gold, system)))
            self.stats[f"{task}:injected"] += 1
        if task == "icdo_morphology":
            opts.append(prompts.Option(prompts.NO_MORPHOLOGY, prompts.OPTION_NONE_TEXT))
        position = next(i for i, o in enumerate(opts) if o.code == item.gold)
        self.stats[f"{task}:retrieved" if retrieved else f"{task}:missed"] += 1
        self.positions[position] += 1
        return Example(task, item.text, prompts.LABELS[position], None if keine else item.gold,
                       None if keine else system, item.source, template, item.augmented, item.term,
                       item.term_code, item.chapter, "rag", tuple(opts), bool(retrieved), position)

    def _stream(self, items: list[_RagItem], rng: random.Random) -> Iterator[_RagItem]:
        for _ in range(RAG_MAX_ROUNDS):
            order = items[:]
            rng.shuffle(order)
            yield from order

    def build(self, task: str, quota: int) -> list[Example]:
        from tqdm import tqdm

        out: list[Example] = []
        rng = self.cfg.rng("rag", task)
        strata = self.pools_for(task)
        counts = _largest_remainder(quota, {name: share for name, _, share in strata})
        bar = tqdm(total=quota, desc=f"rag {task}", unit="ex", disable=not self.progress, leave=False)
        for name, items, _ in strata:
            items = [it for it in items if self._allowed(it)]
            want, got, stream = counts[name], 0, self._stream(items, rng)
            while got < want:
                size = min(SEARCH_BATCH, want - got + 2)  # a few spare for the misses that are dropped
                batch = [it for _, it in zip(range(size), stream)]
                if not batch:
                    self.stats[f"{task}:{name}:short"] += want - got
                    break
                self._candidates(TASK_SYSTEM[task], batch)
                for it in batch:
                    if got >= want:
                        break
                    ex = self._example(task, it, rng)
                    if ex is not None:
                        out.append(ex)
                        got += 1
                        bar.update(1)
        bar.close()
        return out


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    s = sum(weights.values())
    if not weights or s <= 0:
        return {k: 0 for k in weights}
    raw = {k: total * w / s for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), list(weights).index(k)))[:total - sum(out.values())]:
        out[k] += 1
    return out


# ----------------------------------------------------------------------------------------- sampling, writing

def sample_per_task(examples: list[Example], limit: int | None, rng: random.Random) -> list[Example]:
    """At most `limit` examples, each task keeping its share; the result in a seeded random order."""
    by_task: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_task[ex.task].append(ex)
    if limit is not None and limit < len(examples):
        quotas = _largest_remainder(limit, {t: len(v) for t, v in by_task.items()})
        chosen = [ex for t, v in by_task.items() for ex in rng.sample(v, quotas[t])]
    else:
        chosen = list(examples)
    rng.shuffle(chosen)
    return chosen


def _write_jsonl(path: Path, lines: Iterator[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    tmp.replace(path)


def _counts(examples: list[Example]) -> dict:
    by_template: dict[str, Counter] = defaultdict(Counter)
    for ex in examples:
        by_template[ex.task][str(ex.template)] += 1
    return {
        "total": len(examples),
        "by_task": dict(sorted(Counter(ex.task for ex in examples).items())),
        "by_source": dict(sorted(Counter(ex.source.split(":")[0].split(">")[0] for ex in examples).items())),
        "by_source_kind": dict(sorted(Counter(ex.source for ex in examples).items())),
        "by_icd10gm_chapter": dict(sorted(Counter(ex.chapter for ex in examples if ex.chapter).items())),
        "by_template": {t: dict(sorted(c.items())) for t, c in sorted(by_template.items())},
        "augmented": dict(sorted(Counter(ex.task for ex in examples if ex.augmented).items())),
        "by_answer_kind": dict(sorted(Counter(_answer_kind(ex) for ex in examples).items())),
    }


def _answer_kind(ex: Example) -> str:
    if ex.fmt == "rag" and ex.task != "is_tumor":
        return f"{ex.task}:option"
    if ex.task == "is_tumor":
        return f"is_tumor:{ex.answer}"
    if ex.answer == prompts.NO_MORPHOLOGY and ex.code is None:
        return "icdo_morphology:keine"
    return f"{ex.task}:code" if ex.task != "title" else "title:text"


# ----------------------------------------------------------------------------------------- the build

def _exclude_sets(cfg: DataConfig, cat: Catalogue) -> tuple[list[dict], set[str]]:
    from oncocoder.eval.testset import DEV_SET, load_testset

    paths, seen = [], set()
    for p in (DEV_SET, *cfg.exclude):
        p = Path(p)
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)
    info, texts = [], set()
    for p in paths:
        ts = load_testset(p, cat)
        info.append({"path": str(p), "sha256": ts.sha256, "rows": len(ts.rows)})
        texts |= {normalize_text(r.text) for r in ts.rows}
    texts.discard("")
    return info, texts


def build_dataset(cfg: DataConfig, catalogue: Catalogue | None = None, retriever=None, progress: bool = True) -> dict:
    """Build the instruction data into cfg.out (see the module docstring); returns the stats of the dataset card."""
    t_start = time.perf_counter()
    check_config(cfg)
    cat = catalogue or (retriever.catalogue if retriever is not None else load_catalogue())
    out = Path(cfg.out)
    excluded_sets, test_texts = _exclude_sets(cfg, cat)
    pools = _Pools(cat, cfg)

    heldout_cats = select_heldout_categories(cat, cfg)
    rows = heldout_rows(pools, heldout_cats, cfg)
    held_set = set(heldout_cats)
    heldout_texts = {normalize_text(t.text) for t in pools.icd if t.category in held_set}
    heldout_texts |= {normalize_text(i.title) for i in cat.codes["icd10gm"].values() if i.category in held_set}
    guard = _Guard(test_texts, heldout_texts, held_set)
    pools.guard = guard

    # plain format
    t0 = time.perf_counter()
    generated: list[Example] = []
    before: dict[str, int] = {}
    for task in TASKS:
        if task in cfg.tasks:
            made = GENERATORS[task](pools, progress)
            before[task] = len(made)
            generated += [ex for ex in made if guard.check(ex)]
    plain = sample_per_task(generated, cfg.limit, cfg.rng("order", "plain"))
    plain_seconds = time.perf_counter() - t0

    # RAG format
    rag: list[Example] = []
    rag_stats: dict = {}
    rag_seconds = 0.0
    if cfg.rag:
        t0 = time.perf_counter()
        n_rag = min(cfg.rag_size, cfg.limit) if cfg.limit else cfg.rag_size
        active = {t: RAG_SHARES[t] for t in RAG_TASKS if t in cfg.tasks}
        quotas = _largest_remainder(n_rag, active)
        retrieval_tasks = [t for t in active if t != "is_tumor" and quotas[t] > 0]
        if retrieval_tasks and retriever is None:
            from oncocoder.index.retrieve import Retriever

            retriever = Retriever(catalogue=cat)
        retriever_seconds = time.perf_counter() - t0
        builder = _RagBuilder(pools, guard, retriever, progress)
        for task in active:
            if task == "is_tumor":
                pool = [ex for ex in generated if ex.task == "is_tumor"]
                for ex in cfg.rng("rag", "is_tumor").sample(pool, min(quotas[task], len(pool))):
                    rag.append(Example(ex.task, ex.text, ex.answer, None, None, ex.source, ex.template,
                                       ex.augmented, ex.term, ex.term_code, ex.chapter, "rag"))
            elif quotas[task]:
                rag += builder.build(task, quotas[task])
        rag = sample_per_task(rag, None, cfg.rng("order", "rag"))
        rag_seconds = time.perf_counter() - t0
        retrieval_examples = sum(1 for ex in rag if ex.options is not None)
        rag_stats = {
            "quotas": quotas,
            "retrieval": {k: v for k, v in sorted(builder.stats.items())},
            "gold_retrieved": sum(1 for ex in rag if ex.gold_retrieved),
            "gold_injected": sum(1 for ex in rag if ex.gold_retrieved is False),
            "gold_position": {str(k): v for k, v in sorted(builder.positions.items())},
            "options": {task: builder.k[TASK_SYSTEM[task]] + (task == "icdo_morphology") for task in TASK_SYSTEM},
            "search_seconds": round(builder.search_seconds, 2),
            "retriever_load_seconds": round(retriever_seconds, 1),
            "seconds_per_retrieval_example": (round((rag_seconds - retriever_seconds) / retrieval_examples, 4)
                                              if retrieval_examples else None),
        }

    # write
    out.mkdir(parents=True, exist_ok=True)
    for name in ("plain.jsonl", "rag.jsonl", "heldout.jsonl", "README.md", "stats.json"):
        (out / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    _write_jsonl(out / "plain.jsonl", (ex.to_json() for ex in plain))
    plain_seconds += time.perf_counter() - t0
    if cfg.rag:
        t0 = time.perf_counter()
        _write_jsonl(out / "rag.jsonl", (ex.to_json() for ex in rag))
        rag_seconds += time.perf_counter() - t0
    _write_jsonl(out / "heldout.jsonl", (json.dumps(r, ensure_ascii=False) for r in rows))

    stats = {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": {f.name: (str(getattr(cfg, f.name)) if f.name == "out" else
                            [str(p) for p in cfg.exclude] if f.name == "exclude" else
                            list(cfg.tasks) if f.name == "tasks" else getattr(cfg, f.name))
                   for f in fields(cfg)},
        "catalogues": {name: {"path": Path(m.get("path", "")).name, "sha256": m.get("sha256")}
                       for name, m in sorted(cat.sources.items())},
        "files": {"plain.jsonl": len(plain), "rag.jsonl": len(rag) if cfg.rag else None, "heldout.jsonl": len(rows)},
        "generated_before_filters": before,
        "available_after_filters": dict(sorted(Counter(ex.task for ex in generated).items())),
        "available_after_filters_total": len(generated),
        "plain": _counts(plain),
        "rag": {**_counts(rag), **rag_stats} if cfg.rag else None,
        "excluded": {"test_sets": excluded_sets, "leakage_pairs": dict(sorted(guard.leakage.items())),
                     "heldout_pairs": dict(sorted(guard.heldout.items()))},
        "heldout": {"categories": heldout_cats,
                    "tumor_categories": [c for c in heldout_cats if cat.info(c, "icd10gm") is not None
                                         and cat.info(c, "icd10gm").chapter == TUMOR_CHAPTER],
                    "rows": len(rows), "tumor_rows": sum(1 for r in rows if r["is_tumor"])},
        "title_systems": list(title_systems()),
        "timing": {"plain_seconds": round(plain_seconds, 1), "rag_seconds": round(rag_seconds, 1),
                   "total_seconds": round(time.perf_counter() - t_start, 1)},
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(dataset_card(stats), encoding="utf-8")
    return stats


# ----------------------------------------------------------------------------------------- dataset card

def _table(title: str, counts: dict, header: str = "value") -> str:
    if not counts:
        return f"**{title}**: none\n"
    lines = [f"**{title}**", "", f"| {header} | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in counts.items()]
    return "\n".join(lines) + "\n"


def dataset_card(stats: dict) -> str:
    cfg, plain, rag = stats["config"], stats["plain"], stats["rag"]
    parts = [
        "# oncocoder instruction data",
        "",
        "Question/answer pairs built from the public catalogues (ICD-10-GM 2025 with Alpha-ID-SE, ICD-O-3) following "
        "arXiv 2510.13624, plus a RAG format with the candidates of the retrieval index. Built by "
        f"`oncocoder.finetune.data` (generator version {stats['generator_version']}, seed {stats['seed']}) on "
        f"{stats['built_at']}.",
        "",
        "## Files",
        "",
        "| file | lines |",
        "|---|---:|",
        *[f"| {k} | {'-' if v is None else f'{v:,}'} |" for k, v in stats["files"].items()],
        "",
        "Each JSONL line: `messages` (user question from `oncocoder.agent.prompts`, assistant answer exactly as the "
        "constrained decoder produces it), `task`, `system` (the coding system of `code`), `code` (gold code or "
        "null), `source` (catalogue file and entry kind), `template` (question variant), `format` (plain | rag), "
        "`augmented` (abbreviated | null); RAG lines add `gold_retrieved` and `gold_position`. `heldout.jsonl` is a "
        "test set in the project's format (`oncocoder eval` can read it).",
        "",
        "## Plain format",
        "",
        _table("Per task", plain["by_task"], "task"),
        _table("Per answer kind", plain["by_answer_kind"], "answer"),
        _table("Per source catalogue", plain["by_source"], "source"),
        _table("Per source and entry kind", plain["by_source_kind"], "source"),
        _table("Per ICD-10-GM chapter (pairs built from ICD-10-GM terms)", plain["by_icd10gm_chapter"], "chapter"),
        _table("Abbreviated variants", plain["augmented"], "task"),
        "**Per template index**",
        "",
        *[f"- {task}: " + ", ".join(f"{i}: {n:,}" for i, n in c.items()) for task, c in plain["by_template"].items()],
        "",
    ]
    if rag:
        parts += [
            "## RAG format",
            "",
            _table("Per task", rag["by_task"], "task"),
            _table("Per source catalogue", rag["by_source"], "source"),
            _table("Per ICD-10-GM chapter", rag["by_icd10gm_chapter"], "chapter"),
            _table("Abbreviated variants", rag["augmented"], "task"),
            _table("Gold position (option index)", rag["gold_position"], "position"),
            f"Gold found by retrieval: {rag['gold_retrieved']:,}; gold inserted after a miss: "
            f"{rag['gold_injected']:,} (inject share {cfg['rag_inject_share']}; the other misses were dropped). "
            f"Retrieval counters: {json.dumps(rag['retrieval'])}. Options shown: {json.dumps(rag['options'])} "
            "(morphology: plus the last option \"keine Histologie angegeben\"). The tumor question appears in its "
            f"plain form. Retriever load {rag['retriever_load_seconds']} s, search time {rag['search_seconds']} s; "
            f"{rag['seconds_per_retrieval_example']} s per RAG example with retrieval (load excluded).",
            "",
        ]
    exc = stats["excluded"]
    parts += [
        "## Leakage guard and held-out split",
        "",
        "Texts are compared after lower-casing, folding umlauts, removing punctuation and collapsing whitespace. "
        "Pairs whose text equals a row of these test sets were dropped:",
        "",
        *[f"- `{t['path']}` ({t['rows']} rows, sha256 {t['sha256'][:16]}...)" for t in exc["test_sets"]],
        "",
        f"Excluded (leakage) pairs: {json.dumps(exc['leakage_pairs'])}. Held-out pairs removed: "
        f"{json.dumps(exc['heldout_pairs'])}. (`plain`: pairs dropped; `rag_pool_terms`: terms taken out of the RAG "
        "term pools before sampling.)",
        "",
        f"Held-out 3-character categories ({len(stats['heldout']['categories'])}: share {cfg['heldout_share']} per "
        "chapter, chapter II stratified by kind; tumor categories "
        f"{', '.join(stats['heldout']['tumor_categories'])}): "
        f"{', '.join(stats['heldout']['categories'])}. None of their terms or titles appears "
        f"in a training file (nor as a RAG option). `heldout.jsonl`: {stats['heldout']['rows']} rows, "
        f"{stats['heldout']['tumor_rows']} of them tumor terms.",
        "",
        "## Build",
        "",
        f"- configuration: `{json.dumps(cfg, ensure_ascii=False)}`",
        "- pairs generated per task before the filters and the limit: "
        f"`{json.dumps(stats['generated_before_filters'])}`",
        f"- pairs available after the leakage and held-out filters (before the limit): "
        f"{stats['available_after_filters_total']:,} `{json.dumps(stats['available_after_filters'])}`",
        "- catalogues: " + "; ".join(f"{n} `{m['path']}` sha256 {m['sha256']}" for n, m in stats["catalogues"].items()),
        f"- code -> title pairs for: {', '.join(stats['title_systems'])}",
        f"- time: plain {stats['timing']['plain_seconds']} s (generation and writing), RAG "
        f"{stats['timing']['rag_seconds']} s (retriever load, retrieval, writing), total "
        f"{stats['timing']['total_seconds']} s; peak memory {stats['peak_memory_mib']} MiB (resident, whole process)",
        "",
    ]
    return "\n".join(parts)
