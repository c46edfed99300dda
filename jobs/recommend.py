"""recommend job: see `marketlake.jobs.recommend` (run with ./spark-submit.sh recommend --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("recommend"))
