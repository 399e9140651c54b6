"""The Dagster code location: assembles assets, checks, resources, sensors and schedules."""
import dagster as dg

defs = dg.Definitions()
