"""Rows of one pinned Lance dataset version by position, read fragment by fragment in concurrent calls.

Lance's dataset-level ``take`` maps every position to its row through the fragment's deletion vector in time
that grows with the position: on a 99,000-row fragment that holds one deletion file (any ``merge_insert``
that changed a row leaves one), 50 rows take ~70 ms whatever their size, against ~0.5 ms by the fragment's
own ``take`` (``LanceFragment.take``: positions among the fragment's live rows; pylance 14). So
positions are split by fragment here, and each fragment's share is read in up to :data:`PARALLEL` concurrent
calls (on object storage every row range is a request, waiting mostly on the network; on a local disk cold
reads of large rows overlap), or :data:`PARALLEL_SMALL_ROWS` for rows the caller says are small on a local
disk (there more calls only add their own cost; see docs/search-at-scale.md).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

#: Concurrent ``take`` calls per read.
PARALLEL = 32
#: Concurrent ``take`` calls per read of rows under :data:`SMALL_ROW_BYTES` from a local disk.
PARALLEL_SMALL_ROWS = 4
SMALL_ROW_BYTES = 64 * 1024
#: Rows per call below which a read is not split further.
MIN_ROWS_PER_CALL = 2
_THREADS = ThreadPoolExecutor(PARALLEL, thread_name_prefix="index-take")


class RowTaker:
    """Reads rows of one pinned dataset version (``table.to_lance()``) by position (0 to ``rows - 1``, in
    the order a scan returns them)."""

    def __init__(self, dataset: Any) -> None:
        self.remote = "://" in str(dataset.uri) and not str(dataset.uri).startswith("file://")
        self.fragments = dataset.get_fragments()
        counts = [fragment.count_rows() for fragment in self.fragments]
        self.starts = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=self.starts[1:])

    def take(self, positions: np.ndarray, columns: list[str], row_bytes: float | None = None) -> pa.Table:
        """The rows at ``positions``, in that order, with ``columns``; ``row_bytes``: about how many bytes a
        row of them holds, if the caller knows (None: large)."""
        positions = np.asarray(positions, np.int64)
        order = np.argsort(positions, kind="stable")
        if np.any(order != np.arange(len(order))):
            return self.take(positions[order], columns, row_bytes).take(np.argsort(order))
        small = row_bytes is not None and row_bytes < SMALL_ROW_BYTES and not self.remote
        parallel = PARALLEL_SMALL_ROWS if small else PARALLEL
        calls = []
        for number, local in self.by_fragment(positions):
            pieces = min(parallel, max(1, len(local) // MIN_ROWS_PER_CALL))
            calls += [(self.fragments[number], piece) for piece in np.array_split(local, pieces) if len(piece)]
        if not calls:
            return self.fragments[0].take([], columns=columns) if self.fragments else pa.table({})

        def call(job: tuple[Any, np.ndarray]) -> pa.Table:
            fragment, local = job
            return fragment.take(local.tolist(), columns=columns)

        if len(calls) == 1:
            return call(calls[0])
        return pa.concat_tables(list(_THREADS.map(call, calls)))


    def by_fragment(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Sorted ``positions`` as ``(fragment number, positions among that fragment's live rows)`` pairs, in
        order."""
        positions = np.asarray(positions, np.int64)
        owner = np.searchsorted(self.starts, positions, side="right") - 1
        return [(number, positions[owner == number] - self.starts[number]) for number in np.unique(owner).tolist()]


def take_rows(dataset: Any, positions: np.ndarray, columns: list[str]) -> pa.Table:
    """:meth:`RowTaker.take` for one read."""
    return RowTaker(dataset).take(positions, columns)
