"""The Infinity client: wire protocol, transports, replicas, typed errors and :class:`InfinityEmbeddings`.

Knows nothing of storage, artifacts or Dagster; everything above imports it, it imports nothing above.
"""
from infinity_assets.client.embeddings import ClientStats, InfinityEmbeddings

__all__ = ["ClientStats", "InfinityEmbeddings"]
