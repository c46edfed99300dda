"""sessions job: see `marketlake.jobs.sessions` (run with ./spark-submit.sh sessions --help)."""

import sys

from marketlake.jobs import main

if __name__ == "__main__":
    sys.exit(main("sessions"))
