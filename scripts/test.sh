#!/usr/bin/env bash
# The whole Sluice test suite, from a fresh machine with only Rust installed.
#
#   scripts/test.sh            # build (dev profile) and run every test, twice:
#                              # as it is, then with mutual TLS in every test cluster
#   scripts/test.sh slt_local  # extra arguments go to `cargo nextest run` (one pass)
#   scripts/test.sh --cluster-tls [ARGS]  # only the mutual-TLS pass
#   scripts/test.sh --plain [ARGS]        # only the plain pass
#
# It installs what the tests need when it is missing (as root via apt-get,
# otherwise it stops with the exact install line).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt() { # need_apt COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $2 (for $1) ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "error: '$1' is missing; install it with: sudo apt-get install -y $2" >&2
    exit 1
  fi
}

# protoc: etcd-client and any .proto of ours compile protobuf at build time.
need_apt protoc protobuf-compiler
# etcd: the high-availability tests start their own etcd (tests/tests/ha.rs).
need_apt etcd etcd-server
# ip: the multi-host storage test puts each process in a network namespace.
need_apt ip iproute2
# prometheus, promtool: the metrics test scrapes a cluster (tests/tests/observability.rs).
need_apt prometheus prometheus
# buildah, umoci, skopeo, jq: the container image (deploy/build-image.sh, deploy/check-image.sh).
need_apt buildah buildah; need_apt umoci umoci; need_apt skopeo skopeo; need_apt jq jq

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest ..." >&2
  cargo install cargo-nextest --locked
fi

# Python (ADBC for Flight SQL; moto, SeaweedFS, deltalake and polars for the
# object-storage tests): a venv, created when missing.
SLUICE_PYTHON="$(scripts/python-venv.sh)"
export SLUICE_PYTHON

# Builds are heavy (DataFusion + Ballista): keep the target dir unless told otherwise.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo fmt --all -- --check
# The cluster tests start the real `sluice-scheduler`, `sluice-executor` and
# `sluice` binaries from the target dir: build them first (building the test
# targets does not relink them, and a stale one would test old code).
cargo build --workspace --bins
# Two passes: every test as it is, then every test cluster with mutual TLS
# (certificates minted for the run; the client's exported for the CLI and the
# tests' own clients). `--plain` or `--cluster-tls` runs one; so do filters.
mode=both
case "${1:-}" in
  --plain) mode=plain; shift ;;
  --cluster-tls) mode=tls; shift ;;
esac
if [ "$mode" = both ] && [ $# -gt 0 ]; then mode=plain; fi

rc=0
if [ "$mode" != tls ]; then
  echo "== pass 1: the suite" >&2
  cargo nextest run --workspace --no-fail-fast "$@" || rc=$?
fi
if [ "$mode" != plain ]; then
  echo "== pass 2: the suite with mutual TLS in every test cluster" >&2
  certs="$(mktemp -d)"
  trap 'rm -rf "$certs"' EXIT
  "$CARGO_TARGET_DIR/debug/sluice" cluster certs --out "$certs" --executors 8 >/dev/null
  (
    export SLUICE_TEST_CLUSTER_CERTS="$certs" SLUICE_CLUSTER_CA="$certs/ca.pem" \
      SLUICE_CLUSTER_CERT="$certs/client.pem" SLUICE_CLUSTER_KEY="$certs/client.key"
    cargo nextest run --workspace --no-fail-fast "$@"
  ) || rc=$?
fi
exit "$rc"
