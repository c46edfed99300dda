"""housekeeping job: see `marketlake.jobs.housekeeping` (run with ./spark-submit.sh housekeeping --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("housekeeping"))
