"""The code location ``make demo`` runs: the package's own definitions, with sensors that tick every few
seconds instead of every 30-60 s, so the demo's sensor runs and index syncs follow each other within a minute.

Built through the public factories and the ``Definitions`` constructor only; everything but the two sensors'
``minimum_interval_seconds`` is the package's (``infinity_assets.definitions``).
"""
import dagster as dg

from infinity_assets.definitions import build_definitions
from infinity_assets.orchestration.index_assets import index_automation_sensor as package_index_sensor
from infinity_assets.orchestration.sensors import build_new_documents_sensor

#: Seconds between two ticks of each sensor (the sensor daemons themselves loop every 5 s).
TICK_SECONDS = 5

documents_sensor = build_new_documents_sensor(minimum_interval_seconds=TICK_SECONDS)
index_automation_sensor = dg.AutomationConditionSensorDefinition(
    package_index_sensor.name, target=package_index_sensor.asset_selection,
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=TICK_SECONDS,
    description=package_index_sensor.description)



def demo_definitions() -> dg.Definitions:
    """The package's definitions with the two fast sensors (one ``Definitions`` at module scope: ``defs``)."""
    package = build_definitions(documents_sensor)
    return dg.Definitions(
        assets=package.assets, asset_checks=package.asset_checks, jobs=package.jobs, schedules=package.schedules,
        sensors=[documents_sensor, index_automation_sensor], resources=package.resources, executor=package.executor)


defs = demo_definitions()
