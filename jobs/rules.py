"""rules job: see `marketlake.jobs.rules` (run with ./spark-submit.sh rules --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("rules"))
