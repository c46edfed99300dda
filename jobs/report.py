"""report job: see `marketlake.jobs.report` (run with ./spark-submit.sh report --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("report"))
