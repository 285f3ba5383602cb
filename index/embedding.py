"""The embedding model: any sentence-transformers model, with e5's `query: ` / `passage: ` prefixes.

The default, multilingual-e5-small, is prepared offline (oncocoder.models). On a CPU the encoder runs with int8
dynamic quantisation of its linear layers (`quantize="auto"`): the index builds in about 4.5 instead of 7.3 minutes
on 2 cores and a query embeds in 12 instead of 24 ms, for a small loss of recall (benchmarks/results/retrieval.md).
On a GPU it runs unquantised. The index manifest records the setting, and queries are always embedded the way the
index was built.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.files import sha256_file

QUANTIZE = ("auto", "none", "int8")
SMALL_BATCH = 4  # up to this many texts are encoded in one direct forward pass (on one CPU thread)


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = config.DEFAULT_EMBEDDING_MODEL
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    quantize: str = "auto"  # auto: int8 on a CPU, none on a GPU | none | int8 (CPU only)
    batch_size: int = 64
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None: all cores


def _prefixes_for(model: str) -> tuple[str, str]:
    """e5 models need their prefixes; other models get none unless configured."""
    return ("query: ", "passage: ") if "e5" in model.lower() else ("", "")


def resolve_quantize(cfg: EmbeddingConfig) -> tuple[str, str]:
    """(quantize, device) after resolving `auto`: int8 runs on the CPU only."""
    import torch

    if cfg.quantize not in QUANTIZE:
        raise UserError(f"Unknown --quantize value {cfg.quantize!r}; use {', '.join(QUANTIZE)}.")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quantize = cfg.quantize
    if quantize == "auto":
        quantize = "int8" if device == "cpu" else "none"
    if quantize == "int8":
        if cfg.device not in (None, "cpu"):
            raise UserError("--quantize int8 is for CPU encoding only; use --quantize none on a GPU.")
        device = "cpu"
    return quantize, device


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """A single short query runs fastest on one thread (waking a second one costs more than it saves)."""
    import torch

    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Embedder:
    """Encodes queries and catalogue passages into L2-normalised vectors."""

    def __init__(self, cfg: EmbeddingConfig = EmbeddingConfig()):
        import torch
        from sentence_transformers import SentenceTransformer

        from oncocoder.models import resolve_model

        self.quantize, self.device = resolve_quantize(cfg)
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        path = resolve_model(cfg.model)
        try:
            model = SentenceTransformer(path, device=self.device)
        except (OSError, ValueError) as exc:
            raise UserError(f"The embedding model {cfg.model} could not be loaded ({exc}); pass a sentence-transformers "
                            "model id or folder with --embedding-model.") from exc
        if self.quantize == "int8":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") \
            else model.get_sentence_embedding_dimension()
        self.path = path

    def fingerprint(self) -> dict:
        """What identifies this embedding space in an index manifest."""
        manifest = Path(self.path) / "manifest.json"
        weights = sha256_file(manifest)[:16] if manifest.exists() else None
        return {"model": self.cfg.model, "dim": self.dim, "quantize": self.quantize,
                "query_prefix": self.cfg.query_prefix, "passage_prefix": self.cfg.passage_prefix,
                "prepared_manifest_sha256": weights}

    def _encode(self, texts: list[str], prefix: str, progress: bool = False) -> np.ndarray:
        import torch

        texts = [prefix + t for t in texts]
        if len(texts) <= SMALL_BATCH:  # a query: one forward pass, without encode()'s batching machinery
            with torch.inference_mode(), _torch_threads(1 if self.device == "cpu" else None):
                features = self.model.preprocess(texts)
                features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
                vecs = torch.nn.functional.normalize(self.model(features)["sentence_embedding"], dim=-1)
                return np.ascontiguousarray(vecs.float().cpu().numpy(), dtype=np.float32)
        with torch.inference_mode():
            vecs = self.model.encode(texts, batch_size=self.cfg.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.cfg.query_prefix)

    def passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.cfg.passage_prefix, progress)


def embedding_config(model: str | None = None, **overrides) -> EmbeddingConfig:
    """An EmbeddingConfig with the right prefixes for `model` (e5 prefixes only for e5 models)."""
    model = model or config.DEFAULT_EMBEDDING_MODEL
    q, p = _prefixes_for(model)
    threads = overrides.pop("threads", None) or int(os.environ.get("ONCOCODER_THREADS", "0")) or None
    return EmbeddingConfig(model=model, query_prefix=q, passage_prefix=p, threads=threads, **overrides)
