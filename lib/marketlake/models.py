"""Fitted models: where they are saved, how their version is named, and their row in ops.models.

A model version is `<run date>-<first 8 hex digits of SHA-256 over the params as sorted JSON>`, for example
`2024-06-30-3f9a1c0b`. It is derived, not a timestamp, so re-running a run date with the same params gives
the same version: the model is saved again over the same folder (the latest run for a date wins, as gold
partitions do) and gold tables that carry the version stay identical. Other params give another version
beside it. A model lives at `lake.model_path(name, version)`, `<lake root>/models/<name>/<version>` (Spark
ML's own format: `PipelineModel.load(path)` reads it back).

ops.models is a log: every run that fits a model appends one row (name, version, run date, run id, path,
params, metrics, features), so a re-run adds a row with the same version; the newest row of a version
describes the saved model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any

from marketlake import catalog
from marketlake.lake.schema import spark_schema

if TYPE_CHECKING:
    from pyspark.ml.util import MLWritable

    from marketlake.lake import Lake
    from marketlake.runner import JobContext

MODELS_TABLE = catalog.MODELS.name

# params values are JSON text, so a param of any shape fits (params['k_max'] = '8').
SCHEMA = spark_schema(catalog.MODELS)


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def model_version(run_date: dt.date, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(params_json(params).encode()).hexdigest()[:8]
    return f"{run_date.isoformat()}-{digest}"


def save_model(model: MLWritable, lake: Lake, name: str, version: str) -> str:
    """Save a Spark ML model (or PipelineModel) over `lake.model_path(name, version)`; returns the path."""
    path = lake.model_path(name, version)
    model.write().overwrite().save(path)
    return path


def record_model(
    ctx: JobContext,
    name: str,
    version: str,
    path: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    features: list[str],
) -> None:
    """Append one row to ops.models for a model saved by this run (`ctx`: the job's JobContext)."""
    row = (
        name,
        version,
        ctx.run_date,
        ctx.run_id,
        dt.datetime.now(dt.timezone.utc),
        path,
        {key: json.dumps(value, default=str) for key, value in sorted(params.items())},
        {key: float(value) for key, value in metrics.items()},
        list(features),
    )
    ctx.lake.write(MODELS_TABLE, ctx.spark.createDataFrame([row], SCHEMA), mode="append")
