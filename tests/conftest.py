"""Shared fixtures. Tests run against the real shipped catalogues; the `slow` ones also need the default models and
the retrieval index that `make setup` prepares in the cache ($ONCOCODER_CACHE or ~/.cache/oncocoder)."""

from __future__ import annotations

import pytest

from oncocoder.index.catalogue import load_catalogue


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="session")
def retriever():
    from oncocoder.index.retrieve import Retriever

    return Retriever()
