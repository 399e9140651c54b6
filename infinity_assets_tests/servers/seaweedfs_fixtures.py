"""pytest fixtures: one real SeaweedFS per session, a fresh bucket per test, and store roots of both kinds."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from infinity_assets.documents import DocumentStore

from .seaweedfs import SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """The session's SeaweedFS S3 server (signature checking on)."""
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A new, empty bucket for one test."""
    return seaweedfs.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


@dataclass
class StoreRoot:
    """Where a test's documents live: ``url`` (a folder or s3://bucket/prefix) and how to open it."""

    url: str
    options: dict[str, object] = field(default_factory=dict)

    def store(self, **extra: object) -> DocumentStore:
        """A DocumentStore over this root."""
        return DocumentStore(self.url, **{**self.options, **extra})

    def put(self, key: str, data: bytes | str) -> None:
        """Write one object/file under the root."""
        store = self.store()
        path = store.path(key)
        if not store.is_s3:
            store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe_file(path, data.encode() if isinstance(data, str) else data)

    def delete(self, key: str) -> None:
        """Remove one object/file under the root."""
        store = self.store()
        store.fs.rm(store.path(key))


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path) -> StoreRoot:
    """A store root on the local filesystem and (second parametrization) in a fresh SeaweedFS bucket."""
    if request.param == "local":
        return StoreRoot(str(tmp_path / "store"))
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    bucket = request.getfixturevalue("s3_bucket")
    return StoreRoot(f"s3://{bucket}/prefix", server.storage_options())
