"""Rows by position, fragment by fragment (index/take.py), against Lance's dataset-level take."""
from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa

from infinity_assets.index import take


def test_rows_by_position_equal_the_dataset_take_across_fragments_with_deletions(tmp_path, monkeypatch):
    lance.write_dataset(pa.table({"a": list(range(1000)), "b": [f"row {i}" for i in range(1000)]}),
                        str(tmp_path / "t.lance"), max_rows_per_file=300)
    dataset = lance.dataset(str(tmp_path / "t.lance"))
    dataset.delete("a % 7 = 0")  # a deletion file in every fragment
    dataset = lance.dataset(str(tmp_path / "t.lance"))
    assert len(dataset.get_fragments()) == 4
    monkeypatch.setattr(take, "MIN_ROWS_PER_CALL", 2)  # several concurrent calls per fragment
    rng = np.random.default_rng(0)
    reader = take.RowTaker(dataset)
    for positions in (np.sort(rng.choice(dataset.count_rows(), 60, replace=False)),
                      rng.choice(dataset.count_rows(), 60, replace=False),  # any order
                      np.array([dataset.count_rows() - 1, 0]), np.zeros(0, np.int64)):
        want = dataset.take(positions.tolist(), columns=["a", "b"])
        assert reader.take(positions, ["a", "b"]).to_pylist() == want.to_pylist()
        assert reader.take(positions, ["a", "b"], row_bytes=16).to_pylist() == want.to_pylist()  # fewer calls
    assert take.take_rows(dataset, np.array([5]), ["b"]).column("b").to_pylist() == ["row 6"]
