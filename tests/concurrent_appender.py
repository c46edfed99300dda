"""Appends to one table from its own process; tests/test_lake_concurrency.py starts two of these."""

import sys

from pyspark.sql import functions as F

from marketlake.config import load_config
from marketlake.lake import Lake
from marketlake.spark import build_session

root, writer, appends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = load_config(None)
spark = build_session(config)
lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), root)
for batch in range(appends):
    rows = spark.range(100).select(F.lit(writer).alias("writer"), F.lit(batch).alias("batch"), "id")
    lake.write("bronze.shared", rows, mode="append")
print("done", writer)
