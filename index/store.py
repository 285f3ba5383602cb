"""Building, persisting and loading the retrieval index.

Per system (icd10gm, icdo_topography, icdo_morphology, and ops where loaded) the index holds:
- the distinct catalogue texts of that system ("rows"), each with the codes it names,
- a llama-index `FaissVectorStore` over the rows' embeddings (dense search),
- a character n-gram TF-IDF matrix over the rows (lexical search), stored as an inverted (n-gram x row) matrix.

Everything goes to one folder with a `manifest.json`: the catalogue files and their hashes, the embedding model and
dimension, the row and vector counts. Loading checks the manifest against the current catalogue and embedding
settings and the restored vector counts, and refuses a mismatch with a message to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.index.catalogue import Catalogue, Entry, load_catalogue
from oncocoder.index.embedding import Embedder, EmbeddingConfig, embedding_config
from oncocoder.index.normalize import lexical_form

INDEX_VERSION = 1
HNSW_EF_SEARCH = 256
SMALL_SYSTEM_ROWS = 20_000  # below this, exact search is as fast as HNSW  # 0.98 of the exact top-100 on catalogue-like queries
DEFAULT_INDEX_NAME = "default"


@dataclass(frozen=True)
class IndexConfig:
    name: str = DEFAULT_INDEX_NAME
    alphabet: str = "alphaidse"  # alphaidse | alpha2010
    systems: tuple[str, ...] = config.SYSTEMS
    embedding: EmbeddingConfig = field(default_factory=embedding_config)
    faiss: str = "hnsw"  # hnsw (approximate, ~0.6 ms per query) | flat (exact inner product, ~12 ms)
    ngram_range: tuple[int, int] = (3, 5)

    def path(self) -> Path:
        return config.index_dir() / self.name


@dataclass
class SystemIndex:
    """The rows of one system with their dense and lexical indexes."""

    system: str
    texts: list[str]  # distinct catalogue texts
    row_entries: list[list[int]]  # row -> indices into entries
    entries: list[Entry]
    vector_store: object  # llama_index FaissVectorStore
    vectorizer: object  # sklearn TfidfVectorizer
    inverted: sp.csr_matrix  # (n-gram x row) TF-IDF weights


def system_rows(entries: list[Entry]) -> tuple[list[str], list[list[int]]]:
    """Distinct texts (first spelling kept, case-insensitive) and the entries behind each."""
    index: dict[str, int] = {}
    texts, rows = [], []
    for i, e in enumerate(entries):
        key = " ".join(e.text.lower().split())
        if key not in index:
            index[key] = len(texts)
            texts.append(e.text)
            rows.append([])
        rows[index[key]].append(i)
    return texts, rows


def _entries_hash(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.code}\t{e.text}\t{e.kind}\n".encode())
    return h.hexdigest()


def _catalogue_sources(cat: Catalogue) -> dict:
    return {name: {k: v for k, v in meta.items() if k in ("path", "sha256", "version")} | {"file": Path(meta["path"]).name}
            for name, meta in cat.sources.items()}


def _make_faiss(kind: str, dim: int):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    raise UserError(f"Unknown --faiss value {kind!r}; use flat or hnsw.")


def _fit_lexical(texts: list[str], ngram_range: tuple[int, int]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True, dtype=np.float32,
                          lowercase=False)
    matrix = vec.fit_transform([lexical_form(t) for t in texts])
    return vec, sp.csr_matrix(matrix.T)


def build_index(cfg: IndexConfig = IndexConfig(), catalogue: Catalogue | None = None, progress: bool = True,
                embedder: Embedder | None = None) -> Path:
    """Embed every catalogue term of the configured systems and persist the index with its manifest."""
    from llama_index.vector_stores.faiss import FaissVectorStore

    t0 = time.time()
    cat = catalogue or load_catalogue(cfg.alphabet)
    embedder = embedder or Embedder(cfg.embedding)
    target = cfg.path()
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    systems = {}
    for system in cfg.systems:
        entries = cat.entries_of(system)
        if not entries:
            raise UserError(f"The catalogue has no entries for {system}; check the catalogue files.")
        texts, rows = system_rows(entries)
        if progress:
            print(f"[{system}] embedding {len(texts):,} distinct terms ({len(entries):,} entries)", flush=True)
        vecs = embedder.passages(texts, progress=progress)
        # HNSW pays off for the large ICD-10-GM part; the small ICD-O-3 parts are searched exactly
        faiss_index = _make_faiss(cfg.faiss if len(texts) > SMALL_SYSTEM_ROWS else "flat", embedder.dim)
        faiss_index.add(vecs)  # bulk add; the llama-index store below persists and queries it
        store = FaissVectorStore(faiss_index=faiss_index)
        sysdir = tmp / system
        sysdir.mkdir()
        store.persist(persist_path=str(sysdir / "vector_store.faiss"))
        vectorizer, inverted = _fit_lexical(texts, cfg.ngram_range)
        with open(sysdir / "lexical.pkl", "wb") as f:
            pickle.dump(vectorizer, f)
        sp.save_npz(sysdir / "lexical_inverted.npz", inverted)
        systems[system] = {"entries": len(entries), "rows": len(texts), "vectors": int(faiss_index.ntotal),
                           "entries_sha256": _entries_hash(entries)}
    manifest = {
        "index_version": INDEX_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "alphabet": cfg.alphabet,
        "catalogues": _catalogue_sources(cat),
        "embedding": embedder.fingerprint(),
        "faiss": cfg.faiss,
        "ngram_range": list(cfg.ngram_range),
        "systems": systems,
        "build_seconds": round(time.time() - t0, 1),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    if progress:
        print(f"Index written to {target} in {manifest['build_seconds']} s", flush=True)
    return target


def read_manifest(path: Path) -> dict:
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise UserError(f"No index at {path}; build it with `oncocoder index build`.")
    try:
        return json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"The index manifest {mpath} is damaged; rebuild with `oncocoder index build`.") from exc


def check_manifest(manifest: dict, cfg: IndexConfig, cat: Catalogue) -> None:
    """Refuse an index built from other catalogues or another embedding model."""
    rebuild = "; rebuild it with `oncocoder index build`."
    path = cfg.path()
    if manifest.get("index_version") != INDEX_VERSION:
        raise UserError(f"The index at {path} was written by another version of oncocoder{rebuild}")
    built = {k: v["sha256"] for k, v in manifest.get("catalogues", {}).items()}
    now = {k: v["sha256"] for k, v in _catalogue_sources(cat).items()}
    if built != now:
        changed = sorted(set(built) ^ set(now) | {k for k in built if k in now and built[k] != now[k]})
        raise UserError(f"The index at {path} was built from other catalogue files ({', '.join(changed)}){rebuild}")
    emb = manifest.get("embedding", {})
    quantize_differs = cfg.embedding.quantize != "auto" and emb.get("quantize") != cfg.embedding.quantize
    if emb.get("model") != cfg.embedding.model or quantize_differs:
        raise UserError(f"The index at {path} was built with the embedding model {emb.get('model')} "
                        f"(quantize={emb.get('quantize')}), not {cfg.embedding.model} "
                        f"(quantize={cfg.embedding.quantize}){rebuild}")
    missing = [s for s in cfg.systems if s not in manifest.get("systems", {})]
    if missing:
        raise UserError(f"The index at {path} has no {', '.join(missing)} part{rebuild}")


def load_index(cfg: IndexConfig = IndexConfig(), catalogue: Catalogue | None = None) -> dict[str, SystemIndex]:
    """Load and verify a built index; every mismatch is refused with a message to rebuild."""
    from llama_index.vector_stores.faiss import FaissVectorStore

    path = cfg.path()
    manifest = read_manifest(path)
    cat = catalogue or load_catalogue(manifest.get("alphabet", cfg.alphabet))
    check_manifest(manifest, cfg, cat)
    out = {}
    for system in cfg.systems:
        info = manifest["systems"][system]
        entries = cat.entries_of(system)
        if _entries_hash(entries) != info["entries_sha256"]:
            raise UserError(f"The index at {path} does not match the catalogue entries of {system}; rebuild it with "
                            "`oncocoder index build`.")
        texts, rows = system_rows(entries)
        sysdir = path / system
        try:
            store = FaissVectorStore.from_persist_path(str(sysdir / "vector_store.faiss"))
            with open(sysdir / "lexical.pkl", "rb") as f:
                vectorizer = pickle.load(f)
            inverted = sp.load_npz(sysdir / "lexical_inverted.npz").tocsr()
        except (OSError, RuntimeError, pickle.UnpicklingError, ValueError, EOFError) as exc:
            raise UserError(f"The index files under {sysdir} are missing or damaged ({exc.__class__.__name__}); "
                            "rebuild with `oncocoder index build`.") from exc
        n_vectors = store.client.ntotal
        if n_vectors != len(texts) or n_vectors != info["vectors"] or inverted.shape[1] != len(texts):
            raise UserError(f"The index of {system} at {path} holds {n_vectors} vectors for {len(texts)} catalogue "
                            "terms; rebuild it with `oncocoder index build`.")
        if store.client.d != manifest["embedding"]["dim"]:
            raise UserError(f"The index of {system} at {path} has dimension {store.client.d}, the manifest says "
                            f"{manifest['embedding']['dim']}; rebuild it with `oncocoder index build`.")
        out[system] = SystemIndex(system, texts, rows, entries, store, vectorizer, inverted)
    return out
