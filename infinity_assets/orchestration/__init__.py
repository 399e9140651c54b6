"""The Dagster wiring: resources, partitions, lineage, embedding and index assets, checks, sensors, schedules, jobs.

The only package that imports dagster; it wires config to the plain-Python layers below and reports metadata.
``infinity_assets.definitions`` assembles it into the code location.
"""
