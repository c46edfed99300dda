"""experiment job: see `marketlake.jobs.experiment` (run with ./spark-submit.sh experiment --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("experiment"))
