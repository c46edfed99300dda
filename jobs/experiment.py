"""experiment job: see `marketlake.jobs.experiment` (run with ./spark-submit.sh experiment --help)."""

import sys

from marketlake.runner import main

if __name__ == "__main__":
    sys.exit(main("experiment"))
