"""activate job: see `marketlake.jobs.activate` (run with ./spark-submit.sh activate --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("activate"))
