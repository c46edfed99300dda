"""pipeline job: see `marketlake.jobs.pipeline` (run with ./spark-submit.sh pipeline --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("pipeline"))
