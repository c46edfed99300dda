"""generate job: see `marketlake.jobs.generate` (run with ./spark-submit.sh generate --help)."""

import sys

from marketlake.runner import main

if __name__ == "__main__":
    sys.exit(main("generate"))
