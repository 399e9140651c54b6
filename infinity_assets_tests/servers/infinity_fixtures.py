"""pytest fixtures: the real Infinity server, started once per session with all four offline models."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from infinity_assets_dev.infinity import InfinityServer


@pytest.fixture(scope="session")
def infinity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfinityServer]:
    """One real Infinity server serving minilm-colbert, minilm-colbert-128, colpali-tiny and colqwen2-tiny."""
    with InfinityServer(log_dir=tmp_path_factory.mktemp("infinity-logs")) as server:
        yield server


@pytest.fixture
def start_infinity(tmp_path) -> Iterator[Callable[..., InfinityServer]]:
    """A factory starting extra servers (e.g. with ``api_key=``) that are stopped after the test."""
    started: list[InfinityServer] = []

    def start(models: list[str], **options: object) -> InfinityServer:
        server = InfinityServer(models, log_dir=tmp_path, **options).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
