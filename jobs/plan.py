"""plan job: see `marketlake.jobs.plan` (run with ./spark-submit.sh plan --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("plan"))
