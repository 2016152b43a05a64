"""Token rows assembled from pre-tokenised pieces: one vectorised gather for a whole micro-batch.

Scoring tokenises each distinct text once and then lays rows out from those ids ([CLS], a span of a
text's ids, [SEP], ...). transformers 5 has no public call that lays out pre-tokenised pieces, so
this one does; tests check the pair layout equals the tokenizer's own encoding of each pair.
"""

from __future__ import annotations

import numpy as np

PADDING = -1  # the piece index of a padding slot


def padded_rows(
    source: np.ndarray, starts: np.ndarray, lengths: np.ndarray, pad_id: int, width_multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Rows made of pieces, padded to the longest row (rounded up to `width_multiple`).

    `starts` and `lengths` are (rows, pieces): row r is source[starts[r, 0] : + lengths[r, 0]], then
    piece 1, and so on. Returns (ids, piece): the token ids, `pad_id` on padding, and the index of the
    piece each slot came from, `PADDING` on padding (so callers derive segment ids and masks from it).
    """
    n_rows, n_pieces = lengths.shape
    piece_start, piece_length = starts.ravel(), lengths.ravel()
    position = np.arange(int(piece_length.sum()))
    gather = np.repeat(piece_start - (np.cumsum(piece_length) - piece_length), piece_length) + position
    row_lengths = lengths.sum(axis=1)
    width = max(int(row_lengths.max(initial=0)), 1)
    width = -(-width // width_multiple) * width_multiple
    slot = (
        np.repeat(np.arange(n_rows) * width - (np.cumsum(row_lengths) - row_lengths), row_lengths) + position
    )
    ids = np.full(n_rows * width, pad_id, dtype=np.int64)
    ids[slot] = source[gather]
    piece = np.full(n_rows * width, PADDING, dtype=np.int64)
    piece[slot] = np.repeat(np.tile(np.arange(n_pieces), n_rows), piece_length)
    return ids.reshape(n_rows, width), piece.reshape(n_rows, width)
