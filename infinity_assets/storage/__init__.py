"""Object storage and documents: list and read objects under a root URL (a local folder or ``s3://``), partition
keys, and the formats that turn a file's bytes into documents. Knows nothing of the client or Dagster."""
