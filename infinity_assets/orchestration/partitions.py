"""The partitions of the embedding assets: one dynamic partition per batch folder, per modality."""
import dagster as dg

#: Batch folders under ``raw/text/`` (a partition key maps to its folder via documents.folder_for_partition).
text_partitions = dg.DynamicPartitionsDefinition(name="text_batches")
#: Batch folders under ``raw/images/``.
image_partitions = dg.DynamicPartitionsDefinition(name="image_batches")

PARTITIONS_BY_MODALITY = {"text": text_partitions, "images": image_partitions}
