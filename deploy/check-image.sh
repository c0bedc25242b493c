#!/usr/bin/env bash
# shellcheck disable=SC2015  # `test && ok ... || fail ...` throughout: ok only prints, it cannot fail.
# Check an image archive built by deploy/build-image.sh: that it is
# self-contained and runs as a non-root user.
#
#   deploy/check-image.sh OUT.tar
#
# It unpacks the image's root filesystem (skopeo: oci-archive -> OCI layout,
# umoci: layout -> rootfs), checks the config (User is 65532 / sluice, never
# root; the entrypoint is one of the binaries), the work dir, /tmp and the
# files TLS and user lookup need, then runs every binary's `--version` with
# `chroot ROOTFS` (as root, and as 65532:65532) in an empty environment:
# only files from the image can be loaded, so a missing library fails here.
# Last, a scheduler and an executor started from the image (loopback ports)
# answer one query from the image's `sluice sql`.
# Needs root (chroot, and unpacking with the image's owners). Exit status is
# non-zero on any failure.
set -euo pipefail

[ $# -eq 1 ] && [ "$1" != -h ] && [ "$1" != --help ] || { sed -n '6p' "$0" | sed 's/^# *//' >&2; exit 2; }
ARCHIVE="$1"
[ -f "$ARCHIVE" ] || { echo "error: $ARCHIVE: no such file" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: run as root (chroot and unpacking the image's file owners need it)" >&2; exit 1; }

need_apt() { # need_apt COMMAND PACKAGE (as in scripts/test.sh)
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $2 (for $1) ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "error: '$1' is missing; install it with: sudo apt-get install -y $2" >&2
    exit 1
  fi
}
need_apt skopeo skopeo
need_apt umoci umoci
need_apt jq jq

BINS=(sluice sluice-scheduler sluice-executor)
USER_ID=65532
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-check.XXXXXX")"
BLOB_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
[ -e "$BLOB_CACHE" ] && HAD_BLOB_CACHE=1 || HAD_BLOB_CACHE=0
cleanup() {
  rm -rf "$WORK"
  # skopeo, as root, keeps a digest cache there; leave no trace if we made it.
  if [ "$HAD_BLOB_CACHE" = 0 ] && [ -e "$BLOB_CACHE" ]; then
    rm -f "$BLOB_CACHE"; rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null || true
  fi
}
trap cleanup EXIT

FAILED=0
ok()   { echo "ok    $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }

# ---- unpack ---------------------------------------------------------------
skopeo copy --quiet "oci-archive:$ARCHIVE" "oci:$WORK/layout:sluice"
umoci unpack --image "$WORK/layout:sluice" "$WORK/bundle" >/dev/null
ROOT="$WORK/bundle/rootfs"
skopeo inspect --config "oci-archive:$ARCHIVE" >"$WORK/config.json"
echo "image: $(skopeo inspect "oci-archive:$ARCHIVE" | jq -r '.Digest')," \
  "$(jq -r '.config.Labels["org.opencontainers.image.version"] // "?"' "$WORK/config.json")," \
  "$(du -sh "$ROOT" | cut -f1) unpacked"

# ---- config -----------------------------------------------------------------
user="$(jq -r '.config.User // ""' "$WORK/config.json")"
case "$user" in
  "$USER_ID" | "$USER_ID:$USER_ID" | sluice | sluice:sluice) ok "User is $user" ;;
  *) fail "User is '${user}' (want $USER_ID:$USER_ID; empty means root)" ;;
esac
entry="$(jq -r '.config.Entrypoint // [] | .[0] // ""' "$WORK/config.json")"
case "$entry" in
  /usr/local/bin/sluice | /usr/local/bin/sluice-scheduler | /usr/local/bin/sluice-executor)
    [ -x "$ROOT$entry" ] && ok "Entrypoint $(jq -c .config.Entrypoint "$WORK/config.json") $(jq -c '.config.Cmd // []' "$WORK/config.json")" \
      || fail "Entrypoint $entry is not an executable in the image" ;;
  *) fail "Entrypoint '$entry' is not one of the Sluice binaries" ;;
esac

# ---- files ------------------------------------------------------------------
grep -q "^sluice:x:$USER_ID:$USER_ID:" "$ROOT/etc/passwd" && ok "/etc/passwd has sluice $USER_ID:$USER_ID" || fail "/etc/passwd has no sluice $USER_ID:$USER_ID"
grep -q "^sluice:x:$USER_ID:" "$ROOT/etc/group" && ok "/etc/group has sluice $USER_ID" || fail "/etc/group has no sluice $USER_ID"
[ -s "$ROOT/etc/nsswitch.conf" ] && ok "/etc/nsswitch.conf" || fail "/etc/nsswitch.conf is missing"
n="$(grep -c 'BEGIN CERTIFICATE' "$ROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true)"
[ "${n:-0}" -gt 0 ] && ok "CA bundle: $n certificates" || fail "/etc/ssl/certs/ca-certificates.crt is missing or empty"
[ "$(stat -c %a "$ROOT/tmp" 2>/dev/null)" = 1777 ] && ok "/tmp is 1777" || fail "/tmp is missing or not mode 1777"
workdir="$(jq -r '.config.WorkingDir // ""' "$WORK/config.json")"
[ "$(stat -c %u:%g "$ROOT$workdir" 2>/dev/null)" = "$USER_ID:$USER_ID" ] && ok "work dir $workdir is owned by $USER_ID:$USER_ID" \
  || fail "work dir '$workdir' is missing or not owned by $USER_ID:$USER_ID"

# ---- run inside the image's root filesystem ------------------------------------
# env -i: nothing from the host's environment (LD_LIBRARY_PATH, ...) either;
# PATH=/usr/local/bin is the image's own.
CHROOT="$(command -v chroot)" || { echo "error: chroot (coreutils) is missing" >&2; exit 1; }
run() { # run LABEL CHROOT_ARGS... -- COMMAND...
  local label="$1"; shift
  local out
  if out="$(env -i PATH=/usr/local/bin "$CHROOT" "$@" 2>&1)"; then
    ok "$label: $(head -n1 <<<"$out")"
  else
    fail "$label (exit $?): $(head -n3 <<<"$out")"
  fi
}
for b in "${BINS[@]}"; do
  [ -x "$ROOT/usr/local/bin/$b" ] || { fail "/usr/local/bin/$b is not in the image"; continue; }
  run "$b --version (root)" "$ROOT" "/usr/local/bin/$b" --version
  run "$b --version (as $USER_ID:$USER_ID)" --userspec="$USER_ID:$USER_ID" "$ROOT" "/usr/local/bin/$b" --version
done
# The image's own entrypoint, as its own user.
[ -n "$entry" ] && [ -x "$ROOT$entry" ] && run "entrypoint as User ($user)" --userspec="${user/#sluice/$USER_ID}" "$ROOT" "$entry" --version

# ---- a cluster inside the image ---------------------------------------------------
# The same chroot, as the image's user with the image's env: a scheduler and an
# executor on loopback ports, and one query through them. This catches what
# --version cannot (TLS and runtime start-up, the work dir being writable).
PIDS=()
stop_cluster() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_cluster; cleanup' EXIT
in_image() { # as the image runs: its User, Env (SLUICE_WORK_DIR, ...) and nothing from the host
  local env=() e
  while IFS= read -r e; do env+=("$e"); done < <(jq -r '.config.Env // [] | .[]' "$WORK/config.json")
  env -i "${env[@]}" "$CHROOT" --userspec="$USER_ID:$USER_ID" "$ROOT" "$@"
}
wait_listening() { # wait_listening LOG NAME -> prints HOST:PORT
  local _
  for _ in $(seq 1 100); do
    grep -o "$2 listening on [^ ]*" "$1" 2>/dev/null | head -n1 | sed 's/.* //' | grep . && return 0
    sleep 0.2
  done
  return 1
}
in_image /usr/local/bin/sluice-scheduler --bind 127.0.0.1:0 >"$WORK/scheduler.log" 2>&1 & PIDS+=($!)
if sched="$(wait_listening "$WORK/scheduler.log" sluice-scheduler)"; then
  ok "sluice-scheduler serves on $sched (in the image, as $USER_ID)"
  in_image /usr/local/bin/sluice-executor --scheduler "$sched" --bind 127.0.0.1:0 >"$WORK/executor.log" 2>&1 & PIDS+=($!)
  if flight="$(wait_listening "$WORK/executor.log" sluice-executor)"; then
    ok "sluice-executor serves on $flight"
    if out="$(in_image /usr/local/bin/sluice sql --format csv --scheduler "$sched" "select 1 + 1 as two" 2>&1)" \
      && [ "$(tr -d '\r' <<<"$out" | tail -n1)" = 2 ]; then
      ok "sluice sql through them: $(tr '\n' ' ' <<<"$out")"
    else
      fail "sluice sql --scheduler $sched: $(tail -n5 <<<"$out")"
    fi
    [ -n "$(ls -A "$ROOT$workdir")" ] && ok "the executor wrote to $workdir" || fail "nothing written to $workdir"
  else
    fail "sluice-executor did not start: $(tail -n5 "$WORK/executor.log")"
  fi
else
  fail "sluice-scheduler did not start: $(tail -n5 "$WORK/scheduler.log")"
fi
stop_cluster

if [ "$FAILED" = 0 ]; then echo "image check passed: $ARCHIVE"; else echo "image check FAILED: $ARCHIVE" >&2; exit 1; fi
