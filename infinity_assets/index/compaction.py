"""Maintenance after a sync: merge the small fragments syncs leave, rewrite a large one only for its deletions.

Every sync that writes adds a fragment (its upserted rows) and marks the changed rows of older fragments
deleted. Lance's default compaction, which LanceDB's ``optimize()`` runs, counts as small every fragment
under 1,048,576 rows and merges it with its small neighbours: after a sync of a few pages into a table built
in one fragment it rewrites the whole table (26 GB for 100,000 ColPali pages). Here a fragment is small when
it holds fewer than an eighth of the table's rows (at least :data:`MIN_SMALL_ROWS`) in data files of less than
an eighth of :data:`~infinity_assets.index.schema.DATA_FILE_BYTES` (tables are written in files of that
bound: a full one is never small), and the small ones are merged, again within the bound, once
:data:`SMALL_FRAGMENTS` of them have accumulated, so a row is rewritten a few times in its life, not at
every sync. A fragment whose deleted rows exceed :data:`DELETED_SHARE` of it is rewritten without
them (Lance's threshold), whatever its size: that is what gives their bytes back. Then versions older than
``cleanup_older_than`` are removed. The index has no Lance indices to optimize (its IVF lives beside it).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from infinity_assets.index.schema import DATA_FILE_BYTES

#: A fragment with fewer rows than the table's divided by this is small (merged with its small neighbours).
SMALL_DIVISOR = 8
#: A fragment under this many rows is small whatever the table's size.
MIN_SMALL_ROWS = 4096
#: Small fragments a table may hold before a sync merges them.
SMALL_FRAGMENTS = 8
#: A fragment with more than this share of its rows deleted is rewritten without them (Lance's default
#: threshold), into one fragment whatever its size.
DELETED_SHARE = 0.1


def compact(table: Any, cleanup_older_than: timedelta) -> dict[str, int]:
    """Compact a LanceDB table after a sync (see the module docstring) and remove its old versions; what it
    did: ``fragments`` before, how many were ``small`` and ``with_deletions`` (over :data:`DELETED_SHARE`), and
    ``fragments_removed`` / ``fragments_added`` (0 when nothing needed compacting). Only the chosen fragments
    take part (``excluded_fragment_ids`` leaves the others as they are)."""
    dataset = table.to_lance()
    fragments = dataset.get_fragments()
    live = [f.physical_rows - f.num_deletions for f in fragments]
    small_rows = max(MIN_SMALL_ROWS, sum(live) // SMALL_DIVISOR)
    small = {f.fragment_id for f, rows in zip(fragments, live)
             if rows < small_rows and _file_bytes(f) < DATA_FILE_BYTES // SMALL_DIVISOR}
    with_deletions = {f.fragment_id for f in fragments if f.num_deletions > DELETED_SHARE * f.physical_rows}
    chosen = (small if len(small) >= SMALL_FRAGMENTS else set()) | with_deletions
    done = {"fragments": len(fragments), "small": len(small), "with_deletions": len(with_deletions),
            "fragments_removed": 0, "fragments_added": 0}
    if chosen:  # the others are left out; a rewritten fragment is written in files within the bound
        metrics = dataset.optimize.compact_files(
            materialize_deletions_threshold=DELETED_SHARE, max_bytes_per_file=DATA_FILE_BYTES,
            excluded_fragment_ids=[f.fragment_id for f in fragments if f.fragment_id not in chosen])
        done.update(fragments_removed=metrics.fragments_removed, fragments_added=metrics.fragments_added)
    table.checkout_latest()
    table.to_lance().cleanup_old_versions(older_than=cleanup_older_than)
    return done


def _file_bytes(fragment: Any) -> int:
    """The bytes of a fragment's data files, as its manifest records them (0 where it does not)."""
    return sum(data.file_size_bytes or 0 for data in fragment.data_files())
