"""The data-version tags Dagster writes on a materialization made from an asset's output.

A backfill run of a range of batches reports one ``AssetMaterialization`` per batch itself (not one output),
so it writes these tags the way Dagster would, giving each batch the same staleness and provenance as a
single-batch run. Dagster has no public function that builds them (its data-versioning protocol lives in
``dagster._core.definitions.data_version``); the tag names below are that protocol's, checked against the
installed Dagster by ``test_provenance_tags_match_dagster`` so an upgrade that renames them fails a test
instead of silently breaking staleness.
"""
from __future__ import annotations

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
DATA_VERSION_IS_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
INPUT_DATA_VERSION_PREFIX = "dagster/input_data_version"
INPUT_EVENT_POINTER_PREFIX = "dagster/input_event_pointer"
#: The data version of a source never observed, and the pointer to no event (Dagster's own values).
INITIAL_DATA_VERSION, NULL_EVENT_POINTER = "INITIAL", "NULL"


def materialization_tags(instance: dg.DagsterInstance, upstream: dg.AssetKey, partition: str, data_version: str,
                         code_version: str) -> dict[str, str]:
    """The tags of a materialization with ``data_version`` made from the latest observation of ``upstream``'s
    ``partition`` (its data version and event pointer): the tags Dagster writes for an output. One value
    differs on purpose: Dagster records, for a partitioned upstream, a hash of the upstream partitions'
    *materialization* versions (the same constant for a source that is only observed), this the batch's
    observed digest."""
    record = instance.get_latest_data_version_record(upstream, partition_key=partition)
    observed = ((record.event_log_entry.tags or {}).get(DATA_VERSION_TAG) if record else None) or INITIAL_DATA_VERSION
    name = upstream.to_user_string()
    return {DATA_VERSION_TAG: data_version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true", CODE_VERSION_TAG: code_version,
            f"{INPUT_DATA_VERSION_PREFIX}/{name}": observed,
            f"{INPUT_EVENT_POINTER_PREFIX}/{name}": str(record.storage_id) if record else NULL_EVENT_POINTER}
