"""Tests of infinity_assets; they start real servers (Infinity, SeaweedFS, Dagster) on 127.0.0.1."""
