"""A code location like the package's own, whose sensor requests a backfill for more than 10 changed batches
(the default is 100): the deployment test proves a sensor burst end to end with a dozen small batches."""
from infinity_assets.definitions import build_definitions
from infinity_assets.orchestration.sensors import build_new_documents_sensor

defs = build_definitions(build_new_documents_sensor(backfill_over=10))
