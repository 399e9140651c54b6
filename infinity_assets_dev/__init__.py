"""Launchers of the real servers that the tests, ``tools/`` and ``benchmarks/`` start on 127.0.0.1 (Infinity,
SeaweedFS, PostgreSQL, a Dagster deployment) and the fault proxy. Development only: not part of the wheel."""
