"""Retrieval of candidate codes: dense (e5 + FAISS) and lexical (character n-grams) search, fused per code.

For one text and one system:
1. The text is normalised (abbreviations written out, see normalize.py).
2. Dense: the query embedding against the FAISS store; lexical: its character n-grams against the inverted
   TF-IDF matrix. Each gives the best-matching catalogue rows.
3. Rows are turned into codes (a code scores with its best row) and the two code rankings are fused by
   reciprocal rank fusion (or taken alone: `method="dense"` / `"lexical"`). By default ICD-O-3 morphology uses
   the lexical ranking alone (`system_methods`), which the retrieval benchmark measured best for histology terms.
4. ICD-O-3 topography also fuses the topography that the ICD-10-GM candidates imply (index/crosswalk.py):
   "Lungen-Adeno-Ca re. UL" finds C34.3 in ICD-10-GM, which names topography C34.3.
5. Hierarchy: a code also earns a share of the best score in its 3-character category, and the codable
   subcodes of the best categories join the list. A hit on a category title ("Bösartige Neubildung der Bronchien
   und der Lunge") thereby brings its terminal codes, and siblings of a near miss stay in reach.
6. Only codable (terminal) codes are returned, each once, with its title, the best-matching term and a score.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue, load_catalogue
from oncocoder.index.crosswalk import topography_for
from oncocoder.index.embedding import Embedder
from oncocoder.index.normalize import expand, lexical_form, query_variants
from oncocoder.index.store import HNSW_EF_SEARCH, IndexConfig, SystemIndex, load_index, read_manifest

METHODS = ("fused", "dense", "lexical")


@dataclass(frozen=True)
class Candidate:
    code: str
    title: str
    matched: str  # the catalogue term that matched best
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RetrievalConfig:
    method: str = "fused"  # every system's method, unless system_methods names another one for it
    # measured best per system (benchmarks/results/retrieval.md): histology terms match best by characters
    system_methods: tuple[tuple[str, str], ...] = (("icdo_morphology", "lexical"),)
    depth: int = 100  # rows taken from each search before fusion
    rrf_k: int = 20  # reciprocal rank fusion constant
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    category_weight: float = 0.5  # share of the category's best score given to every code in it
    expand_categories: int = 3  # codable subcodes of this many top categories join the list
    crosswalk_weight: float = 2.0  # weight of the topography implied by the ICD-10-GM candidates


def validate_text(text: object) -> str:
    """The text, stripped; a UserError for empty, non-text or over-long input."""
    if not isinstance(text, str):
        raise UserError("The text must be a string.")
    stripped = " ".join(text.split())
    if not stripped:
        raise UserError("The text is empty; give a diagnosis text such as 'Mamma-Ca li. oben außen'.")
    if len(stripped) > config.MAX_TEXT_CHARS:
        raise UserError(f"The text has {len(stripped)} characters; the limit is {config.MAX_TEXT_CHARS} "
                        "(one diagnosis per text).")
    return stripped


class Retriever:
    """Candidate codes per system for a diagnosis text."""

    def __init__(self, index_cfg: IndexConfig = IndexConfig(), cfg: RetrievalConfig = RetrievalConfig(),
                 catalogue: Catalogue | None = None, embedder: Embedder | None = None):
        self._system_methods = dict(cfg.system_methods)
        for method in (cfg.method, *self._system_methods.values()):
            if method not in METHODS:
                raise UserError(f"Unknown retrieval method {method!r}; choose one of {', '.join(METHODS)}.")
        self.index_cfg, self.cfg = index_cfg, cfg
        self.catalogue = catalogue or load_catalogue(index_cfg.alphabet)
        self.systems = load_index(index_cfg, self.catalogue)
        self._lexical_cache: dict[str, tuple] = {}
        # queries are embedded the way the index was built (the manifest says how)
        built = read_manifest(index_cfg.path())["embedding"]
        self.embedder = embedder or Embedder(replace(index_cfg.embedding, quantize=built["quantize"]))
        import faiss

        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        for ix in self.systems.values():
            if hasattr(ix.vector_store.client, "hnsw"):
                ix.vector_store.client.hnsw.efSearch = HNSW_EF_SEARCH

    # ------------------------------------------------------------------ searches
    def _dense(self, ix: SystemIndex, qvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from llama_index.core.vector_stores.types import VectorStoreQuery

        res = ix.vector_store.query(VectorStoreQuery(query_embedding=qvec.tolist(),
                                                     similarity_top_k=min(self.cfg.depth, len(ix.texts))))
        return np.array([int(i) for i in res.ids]), np.array(res.similarities, dtype=np.float32)

    def _lexical(self, ix: SystemIndex, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of TF-IDF character n-grams (as the fitted vectorizer weighs them: sublinear tf, idf, l2), summed
        over the query's n-gram rows of the inverted matrix: about twice as fast as vectorizer.transform + matmul."""
        vocabulary, idf, analyzer = self._lexical_parts(ix)
        counts = Counter(g for g in analyzer(lexical_form(query)) if g in vocabulary)
        if not counts:
            return np.array([], dtype=int), np.array([], dtype=np.float32)
        idx = np.fromiter((vocabulary[g] for g in counts), dtype=np.int64, count=len(counts))
        weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * idf[idx]
        weights /= np.linalg.norm(weights)
        scores = ix.inverted[idx].T @ weights
        n = min(self.cfg.depth, int((scores > 0).sum()))
        if n == 0:
            return np.array([], dtype=int), np.array([], dtype=np.float32)
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top].astype(np.float32)

    def _lexical_parts(self, ix: SystemIndex):
        parts = self._lexical_cache.get(ix.system)
        if parts is None:
            vec = ix.vectorizer
            if not (vec.sublinear_tf and vec.norm == "l2" and vec.use_idf):
                raise UserError(f"The lexical index of {ix.system} was fitted with other settings; rebuild the index.")
            parts = self._lexical_cache[ix.system] = (vec.vocabulary_, vec.idf_, vec.build_analyzer())
        return parts

    # ------------------------------------------------------------------ fusion
    def _code_ranking(self, ix: SystemIndex, rows: np.ndarray, scores: np.ndarray) -> dict[str, str]:
        """code -> its best-matching catalogue text, in rank order of first appearance."""
        out: dict[str, str] = {}
        for row in rows.tolist():
            for i in ix.row_entries[row]:
                out.setdefault(ix.entries[i].code, ix.texts[row])
        return out

    def _fuse(self, rankings: list[tuple[float, dict[str, str]]]) -> tuple[dict[str, float], dict[str, str]]:
        """Reciprocal rank fusion of weighted code rankings; each code keeps the match of its strongest part."""
        scores: dict[str, float] = {}
        best: dict[str, tuple[float, str]] = {}
        for weight, ranking in rankings:
            for rank, (code, matched) in enumerate(ranking.items()):
                contribution = weight / (self.cfg.rrf_k + rank + 1)
                scores[code] = scores.get(code, 0.0) + contribution
                if code not in best or contribution > best[code][0]:
                    best[code] = (contribution, matched)
        return scores, {code: matched for code, (_, matched) in best.items()}

    def _hierarchy(self, system: str, scores: dict[str, float]) -> dict[str, float]:
        """Terminal codes only, each with a share of its category's best score; top categories expanded."""
        infos, desc = self.catalogue.codes[system], self.catalogue.descendants(system)
        by_category: dict[str, float] = {}
        for code, s in scores.items():
            info = infos.get(code)
            key = info.category if info else code
            by_category[key] = max(by_category.get(key, 0.0), s)
        out: dict[str, float] = {}
        for code, s in scores.items():
            for t in desc.get(code, ()):
                if t.code == code:
                    out[code] = max(out.get(code, 0.0), s)
                else:  # a hit on a non-terminal title counts for its subcodes like a category hit
                    out.setdefault(t.code, 0.0)
        top_categories = sorted(by_category, key=by_category.get, reverse=True)[:self.cfg.expand_categories]
        for category in top_categories:
            for t in desc.get(category, ()):
                out.setdefault(t.code, 0.0)
        w = self.cfg.category_weight
        return {code: s + w * by_category.get(infos[code].category, 0.0) for code, s in out.items()}

    # ------------------------------------------------------------------ API
    def search(self, text: str, k: int = 10, systems: tuple[str, ...] | list[str] | None = None,
               ) -> dict[str, list[Candidate]]:
        """The top-k codable candidates per system, best first."""
        return self.search_many([text], k, systems)[0]

    def search_many(self, texts: list[str], k: int = 10, systems: tuple[str, ...] | list[str] | None = None,
                    ) -> list[dict[str, list[Candidate]]]:
        """`search` for many texts, with the query embeddings computed in batches (several times faster on a CPU).
        An invalid text raises a UserError; check texts with `validate_text` first where a batch must go on."""
        if k < 1:
            raise UserError(f"-k must be at least 1 (got {k}).")
        systems = list(systems or self.systems)
        unknown = [s for s in systems if s not in self.systems]
        if unknown:
            raise UserError(f"Unknown system {unknown[0]!r}; choose one of {', '.join(self.systems)}.")
        per_text = []
        for text in texts:
            main = expand(validate_text(text)) or text
            per_text.append([main] + query_variants(main))
        vectors: dict[str, object] = {}
        if any(self.method_for(s) != "lexical" for s in systems):
            unique = list(dict.fromkeys(q for queries in per_text for q in queries))
            vectors = dict(zip(unique, self.embedder.queries(unique))) if unique else {}
        return [self._search_queries(queries, [vectors.get(q) for q in queries], k, systems) for queries in per_text]

    def method_for(self, system: str) -> str:
        return self._system_methods.get(system, self.cfg.method)

    def _search_queries(self, queries: list[str], qvecs: list, k: int, systems: list[str]) -> dict[str, list[Candidate]]:
        out: dict[str, list[Candidate]] = {}
        # ICD-10-GM first: its candidates also vote for the topography they imply (index/crosswalk.py)
        order = sorted(systems, key=lambda s: s != "icd10gm")
        if "icdo_topography" in systems and "icd10gm" not in systems and "icd10gm" in self.systems:
            order = ["icd10gm"] + order
        for system in order:
            extra = []
            if system == "icdo_topography" and "icd10gm" in out:
                extra.append((self.cfg.crosswalk_weight, self._topography_from_icd(out["icd10gm"])))
            out[system] = self._search_system(self.systems[system], queries, qvecs, k, extra)
        return {s: out[s] for s in systems}

    def _topography_from_icd(self, icd: list[Candidate]) -> dict[str, str]:
        ranking: dict[str, str] = {}
        for c in icd:
            topo = topography_for(c.code, self.catalogue)
            if topo:
                ranking.setdefault(topo, f"{c.code} {c.title}")
        return ranking

    def _search_system(self, ix: SystemIndex, queries: list[str], qvecs, k: int,
                       extra: list[tuple[float, dict[str, str]]] = ()) -> list[Candidate]:
        rankings = list(extra)
        method = self.method_for(ix.system)
        for query, qvec in zip(queries, qvecs):
            if method in ("fused", "dense"):
                rankings.append((self.cfg.dense_weight, self._code_ranking(ix, *self._dense(ix, qvec))))
            if method in ("fused", "lexical"):
                rankings.append((self.cfg.lexical_weight, self._code_ranking(ix, *self._lexical(ix, query))))
        scores, matched = self._fuse(rankings)
        final = self._hierarchy(ix.system, scores)
        ranked = sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        out = []
        infos = self.catalogue.codes[ix.system]
        for code, score in ranked:
            info = infos[code]
            # a code that joined through its category keeps its own title as the match
            out.append(Candidate(code, info.title, matched.get(code, info.title), round(float(score), 6)))
        return out

    def timed_search(self, text: str, k: int = 10) -> tuple[dict[str, list[Candidate]], float]:
        t0 = time.perf_counter()
        out = self.search(text, k)
        return out, (time.perf_counter() - t0) * 1000


def candidates_json(result: dict[str, list[Candidate]]) -> dict[str, list[dict]]:
    return {s: [c.to_dict() for c in cands] for s, cands in result.items()}
