"""recommend job: see `marketlake.jobs.recommend` (run with ./spark-submit.sh recommend --help)."""

import sys

from marketlake.runner import main

if __name__ == "__main__":
    sys.exit(main("recommend"))
