"""pytest fixtures: one real SeaweedFS per session, a fresh bucket per test, and store roots of both kinds.

* ``seaweedfs`` (session): the running :class:`SeaweedFS` (signature checking on). A server that cannot start
  is a test ERROR, never a skip.
* ``s3_bucket``: a new, empty bucket with a unique name for one test.
* ``store_root`` (parametrized ``local`` / ``s3``): a :class:`StoreRoot`, so a test written once runs against
  the local filesystem and against SeaweedFS; ``store_root.corpus(...)`` is a corpus over it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import pytest

from infinity_assets.corpus import CorpusSpec, StoreSettings
from infinity_assets.storage.documents import DocumentStore

from infinity_assets_dev.seaweedfs import SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """The session's SeaweedFS S3 server (signature checking on), stopped at the end of the session."""
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedFS) -> str:
    """A new, empty bucket (unique name) for one test."""
    return seaweedfs.create_bucket()


@dataclass
class StoreRoot:
    """Where a test's documents live: ``url`` (a folder or ``s3://bucket/prefix``) and how to open it.

    ``options`` are the DocumentStore keyword arguments (``endpoint_url``, ``key``, ``secret``) for S3.
    """

    url: str
    options: dict[str, object] = field(default_factory=dict)

    @property
    def is_s3(self) -> bool:
        """True for an ``s3://`` root."""
        return self.url.startswith("s3://")

    def settings(self, **extra: object) -> StoreSettings:
        """A corpus's store settings over this root (``extra``: other fields, e.g. ``jsonl_text_field``)."""
        options: dict = {"endpoint_url": self.options.get("endpoint_url"),
                         "access_key_id": self.options.get("key"),
                         "secret_access_key": self.options.get("secret")}
        return StoreSettings(root=self.url, **options, **extra)

    def corpus(self, name: str = "t", **settings: object) -> CorpusSpec:
        """A corpus named ``name`` over this root (``settings``: the other :class:`CorpusSpec` fields, e.g.
        ``text=ClientSettings(...)``)."""
        return CorpusSpec(name=name, store=self.settings(), **settings)  # type: ignore[arg-type]

    def store(self, **extra: object) -> DocumentStore:
        """A new DocumentStore over this root (``extra`` overrides options, e.g. ``jsonl_text_field``)."""
        return DocumentStore(self.url, **{**self.options, **extra})

    @cached_property
    def _writer(self) -> DocumentStore:
        return self.store()

    def put(self, key: str, data: bytes | str) -> str:
        """Write one object/file under the root; return its full URI."""
        store = self._writer
        path = store.path(key)
        if not store.is_s3:
            store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe_file(path, data.encode() if isinstance(data, str) else data)
        return store.uri(path)

    def put_many(self, objects: Mapping[str, bytes | str]) -> None:
        """Write many objects at once (concurrent uploads on S3)."""
        store = self._writer
        payload = {store.path(k): v.encode() if isinstance(v, str) else v for k, v in objects.items()}
        if not store.is_s3:
            for path in {p.rsplit("/", 1)[0] for p in payload}:
                store.fs.makedirs(path, exist_ok=True)
        store.fs.pipe(payload)

    def delete(self, key: str) -> None:
        """Remove one object/file under the root."""
        store = self._writer
        store.fs.rm(store.path(key))


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path) -> StoreRoot:
    """A store root on the local filesystem and (second parametrization) in a fresh SeaweedFS bucket."""
    if request.param == "local":
        return StoreRoot(str(tmp_path / "store"))
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    bucket = request.getfixturevalue("s3_bucket")
    return StoreRoot(f"s3://{bucket}/prefix", server.storage_options())
