"""segment job: see `marketlake.jobs.segment` (run with ./spark-submit.sh segment --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("segment"))
