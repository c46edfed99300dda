"""features job: see `marketlake.jobs.features` (run with ./spark-submit.sh features --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("features"))
