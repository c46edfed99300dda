"""propensity job: see `marketlake.jobs.propensity` (run with ./spark-submit.sh propensity --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("propensity"))
