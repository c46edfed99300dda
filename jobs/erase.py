"""erase job: see `marketlake.jobs.erase` (run with ./spark-submit.sh erase --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("erase"))
