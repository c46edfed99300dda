"""generate job: see `marketlake.jobs.generate` (run with ./spark-submit.sh generate --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("generate"))
