"""stream job: see `marketlake.jobs.stream` (run with ./spark-submit.sh stream --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("stream"))
