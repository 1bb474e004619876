"""Fixtures of the store tests."""

from __future__ import annotations

import pytest

from ..conftest import write_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, documents) -> dict:
    """Two texts of real documents: ``first`` (the even ones) and ``second`` (the odd ones)."""
    folder = tmp_path_factory.mktemp("corpus")
    return {"first": str(write_text(folder / "first.txt", "\n\n".join(documents[::2]) + "\n")),
            "second": str(write_text(folder / "second.txt", "\n\n".join(documents[1::2]) + "\n"))}
