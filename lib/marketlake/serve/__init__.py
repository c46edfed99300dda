"""`serve`: recommendations, similar items and segments over HTTP from in-memory snapshots of the gold tables
(python -m marketlake.serve --config conf/X.yaml; see docs/jobs/serve.md). Not a batch job: it runs beside
the scheduler, reads the tables with the `deltalake` package, and starts no Spark."""
