"""Dagster assets that embed documents from object storage with a self-hosted Infinity server."""
