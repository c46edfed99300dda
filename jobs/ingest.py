"""ingest job: see `marketlake.jobs.ingest` (run with ./spark-submit.sh ingest --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("ingest"))
