"""Text transforms shared by training and serving: one character, one token."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable

import numpy as np

PAD_ID = 0
UNK_ID = 1


def normalize(text: str, preprocessing: dict) -> str:
    text = unicodedata.normalize(preprocessing.get("normalize", "NFKC"), text)
    if preprocessing.get("lowercase", True):
        text = text.lower()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] != "C")


def build_vocab(texts: Iterable[str], preprocessing: dict, min_count: int = 2) -> dict[str, int]:
    """Characters seen at least `min_count` times, most frequent first, after the pad and unknown ids."""
    counts = Counter(ch for text in texts for ch in normalize(text, preprocessing))
    kept = sorted((ch for ch, n in counts.items() if n >= min_count), key=lambda ch: (-counts[ch], ch))
    return {ch: i for i, ch in enumerate(kept, start=2)}


def encode_batch(texts: list[str], vocab: dict[str, int], preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (tokens int64 [N, T], lengths int64 [N]), right-padded to the longest row.

    Texts are cut at max_length characters; an empty text becomes one unknown token so every
    row has a length of at least 1.
    """
    max_length = int(preprocessing["max_length"])
    rows = []
    for text in texts:
        ids = [vocab.get(ch, UNK_ID) for ch in normalize(text, preprocessing)[:max_length]]
        rows.append(ids or [UNK_ID])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    tokens = np.full((len(rows), int(lengths.max()) if rows else 1), PAD_ID, dtype=np.int64)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = ids
    return tokens, lengths
