#!/usr/bin/env bash
# Creates (when missing) the Python venv the Flight SQL tests and benchmarks
# use: the ADBC Flight SQL driver, pyarrow and duckdb. Prints its python.
#
#   scripts/python-venv.sh            # venv at $SLUICE_VENV or /var/tmp/sluice-venv
set -euo pipefail
venv="${SLUICE_VENV:-/var/tmp/sluice-venv}"
packages=(adbc-driver-flightsql adbc-driver-manager pyarrow duckdb)

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python3-venv ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "error: python3 with venv is missing; install it with: sudo apt-get install -y python3 python3-venv" >&2
    exit 1
  fi
fi

if ! "$venv/bin/python" -c 'import adbc_driver_flightsql, adbc_driver_manager, pyarrow, duckdb' >/dev/null 2>&1; then
  echo "creating the Python venv $venv (${packages[*]}) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
echo "$venv/bin/python"
