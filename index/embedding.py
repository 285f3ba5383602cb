"""The embedding model: any sentence-transformers model, with e5's `query: ` / `passage: ` prefixes.

The default, multilingual-e5-small, is prepared offline (oncocoder.models). On a CPU the encoder can run with
int8 dynamic quantisation of its linear layers (about 1.7x faster); the index and the queries must then use the
same setting, which the index manifest records.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oncocoder import config
from oncocoder.errors import UserError


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = config.DEFAULT_EMBEDDING_MODEL
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    quantize: str = "none"  # none | int8 (CPU only)
    batch_size: int = 64
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None: all cores


def _prefixes_for(model: str) -> tuple[str, str]:
    """e5 models need their prefixes; other models get none unless configured."""
    return ("query: ", "passage: ") if "e5" in model.lower() else ("", "")


class Embedder:
    """Encodes queries and catalogue passages into L2-normalised vectors."""

    def __init__(self, cfg: EmbeddingConfig = EmbeddingConfig()):
        import torch
        from sentence_transformers import SentenceTransformer

        from oncocoder.models import resolve_model

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_model(cfg.model)
        try:
            model = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise UserError(f"The embedding model {cfg.model} could not be loaded ({exc}); pass a sentence-transformers "
                            "model id or folder with --embedding-model.") from exc
        if cfg.quantize == "int8":
            if device != "cpu":
                raise UserError("--quantize int8 is for CPU encoding only; use --quantize none on a GPU.")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif cfg.quantize != "none":
            raise UserError(f"Unknown --quantize value {cfg.quantize!r}; use none or int8.")
        self.model = model
        self.device = device
        self.dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") \
            else model.get_sentence_embedding_dimension()
        self.path = path

    def fingerprint(self) -> dict:
        """What identifies this embedding space in an index manifest."""
        manifest = Path(self.path) / "manifest.json"
        weights = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else None
        return {"model": self.cfg.model, "dim": self.dim, "quantize": self.cfg.quantize,
                "query_prefix": self.cfg.query_prefix, "passage_prefix": self.cfg.passage_prefix,
                "prepared_manifest_sha256": weights}

    def _encode(self, texts: list[str], prefix: str, progress: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vecs = self.model.encode([prefix + t for t in texts], batch_size=self.cfg.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=progress)
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

