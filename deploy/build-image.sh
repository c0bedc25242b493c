#!/usr/bin/env bash
# Build the Sluice container image as an OCI image archive, without a Docker daemon.
#
#   deploy/build-image.sh BIN_DIR OUT.tar [--tag TAG]
#   deploy/build-image.sh target/release sluice.tar --tag 0.1.0
#   deploy/build-image.sh /var/tmp/sluice-target/debug sluice-dev.tar      # tag: dev
#
# BIN_DIR holds sluice, sluice-scheduler and sluice-executor (any profile).
# The root filesystem is assembled here, not pulled: the three binaries in
# /usr/local/bin, every shared library `ldd` names for them and the dynamic
# loader (same paths as on the build host), /etc/passwd and /etc/group with
# the non-root user `sluice` (65532:65532), a minimal /etc/nsswitch.conf, the
# host's CA bundle (S3 over TLS), /tmp (1777) and /var/lib/sluice (the work
# dir, owned by 65532, set by deploy/Containerfile). The image therefore runs
# on any host kernel but carries the build host's glibc: build on the oldest
# distribution you deploy to (Debian 12 here).
#
# Tool: Debian's buildah (`bud` of deploy/Containerfile, vfs storage, chroot
# isolation, storage in a temp dir that is removed on exit). If buildah cannot
# run here it falls back to umoci (+ skopeo). SLUICE_IMAGE_TOOL=buildah|umoci
# forces one. Missing tools are installed with apt-get when run as root;
# otherwise the script stops with the install line. Check the result with
# deploy/check-image.sh OUT.tar.
set -euo pipefail

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

BIN_DIR="" OUT="" TAG="dev"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || usage; TAG="$2"; shift 2 ;;
    --tag=*) TAG="${1#--tag=}"; shift ;;
    -h|--help) usage ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) if [ -z "$BIN_DIR" ]; then BIN_DIR="$1"; elif [ -z "$OUT" ]; then OUT="$1"; else usage; fi; shift ;;
  esac
done
if [ -z "$BIN_DIR" ] || [ -z "$OUT" ]; then usage; fi

DEPLOY="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$DEPLOY/.." && pwd)"
BINS=(sluice sluice-scheduler sluice-executor)
# The image's user. 65532 is the "nonroot" id distroless images use, so
# cluster policies written for those (runAsUser / runAsGroup) fit as-is.
UID_GID=65532

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

for b in "${BINS[@]}"; do
  [ -x "$BIN_DIR/$b" ] || { echo "error: $BIN_DIR/$b is missing or not executable (build with: cargo build --workspace --bins [--release])" >&2; exit 1; }
done
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$CA_BUNDLE" ]; then
  need_apt update-ca-certificates ca-certificates
  [ -s "$CA_BUNDLE" ] || { echo "error: $CA_BUNDLE is missing; install it with: sudo apt-get install -y ca-certificates" >&2; exit 1; }
fi
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")"
BLOB_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
[ -e "$BLOB_CACHE" ] && HAD_BLOB_CACHE=1 || HAD_BLOB_CACHE=0
cleanup() {
  # vfs layers written as root can be read-only directories: make them
  # removable first, so nothing is left behind on a failed build either.
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
  if [ "$HAD_BLOB_CACHE" = 0 ] && [ -e "$BLOB_CACHE" ]; then
    rm -f "$BLOB_CACHE"
    rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null || true
  fi
}
trap cleanup EXIT

# ---- root filesystem ----------------------------------------------------
CTX="$WORK/context"           # the build context deploy/Containerfile copies from
ROOT="$CTX/rootfs"
# The work dir is apart (workdir/sluice): COPY makes files 0:0 and the
# Containerfile's second COPY --chown gives this one to the user.
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc/ssl/certs" "$ROOT/tmp" "$ROOT/var/lib" "$CTX/workdir/sluice"
chmod 1777 "$ROOT/tmp"

declare -A LIBS=()
for b in "${BINS[@]}"; do
  install -m 0755 "$BIN_DIR/$b" "$ROOT/usr/local/bin/$b"
  # ldd lines: "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)",
  # "/lib64/ld-linux-x86-64.so.2 (0x...)" (the loader), "linux-vdso.so.1 (0x...)"
  # (in the kernel, no file). A static binary prints "not a dynamic executable".
  out="$(ldd "$BIN_DIR/$b" 2>&1)" || { grep -q "not a dynamic executable" <<<"$out" && continue; echo "error: ldd $BIN_DIR/$b: $out" >&2; exit 1; }
  if grep -q "not found" <<<"$out"; then
    echo "error: $BIN_DIR/$b needs libraries this host does not have:" >&2
    grep "not found" <<<"$out" >&2; exit 1
  fi
  while read -r path; do LIBS["$path"]=1; done < <(
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
done
for lib in "${!LIBS[@]}"; do
  mkdir -p "$ROOT$(dirname "$lib")"
  # The file itself (not a symlink) at the path ldd printed: the loader at
  # the ELF interpreter path, libraries in the loader's default directories.
  cp -L "$lib" "$ROOT$lib"
done

cat >"$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
sluice:x:$UID_GID:$UID_GID:sluice:/var/lib/sluice:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<EOF
root:x:0:
sluice:x:$UID_GID:
EOF
# glibc 2.34+ has the files and dns services built in: no libnss_* to copy.
cat >"$ROOT/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
shadow: files
hosts:  files dns
EOF
cp -L "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group" "$ROOT/etc/nsswitch.conf" "$ROOT/etc/ssl/certs/ca-certificates.crt"

# `sluice 0.1.0` -> 0.1.0 (the binary runs on the build host, which has its libraries).
VERSION="$("$ROOT/usr/local/bin/sluice" --version 2>/dev/null | sed -n '1s/.* //p')" || true
VERSION="${VERSION:-$TAG}"
REVISION="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
# Every timestamp in the image (layer files, history, `created`) is the
# commit's time, so the same binaries give the same image digest; set
# SOURCE_DATE_EPOCH to override.
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}"
CREATED="$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
echo "root filesystem: $(du -sh "$ROOT" | cut -f1); libraries: $(printf '%s\n' "${!LIBS[@]}" | sort | xargs -n1 basename | xargs)" >&2

# ---- image ----------------------------------------------------------------
rm -f "$OUT"

build_buildah() { # called as an `if` condition, where set -e is off: hence the `|| return`
  need_apt buildah buildah
  # Storage in $WORK (removed on exit), never the machine's /var/lib/containers.
  # buildah also writes its network config under /etc/containers (moved to
  # $WORK by CONTAINERS_CONF) and, as root, a digest cache in
  # /var/lib/containers/cache that no flag moves: removed on exit if this
  # run created it (see cleanup).
  printf '[network]\nnetwork_config_dir = "%s"\n' "$WORK/net" >"$WORK/containers.conf"
  local B=(env CONTAINERS_CONF="$WORK/containers.conf" buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
  "${B[@]}" bud --isolation chroot --quiet --timestamp "$EPOCH" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" \
    -f "$DEPLOY/Containerfile" -t "sluice:$TAG" "$CTX" >/dev/null || return 1
  "${B[@]}" push --quiet "sluice:$TAG" "oci-archive:$OUT:sluice:$TAG" || return 1
}

build_umoci() {
  need_apt umoci umoci
  # umoci writes file owners from the disk, so the rootfs must carry them
  # (that needs root; as non-root umoci would record everything as 0:0).
  if [ "$(id -u)" != 0 ]; then
    echo "error: the umoci path needs root (it records file owners from disk). As non-root, buildah needs" \
      "subordinate ids instead: ranges for $(id -un) in /etc/subuid and /etc/subgid, and: sudo apt-get install -y uidmap" >&2
    exit 1
  fi
  local L="$WORK/layout" ref="sluice:$TAG"
  cp -a "$CTX/workdir/sluice" "$ROOT/var/lib/sluice"
  chown "$UID_GID:$UID_GID" "$ROOT/var/lib/sluice"
  umoci init --layout "$L"
  umoci new --image "$L:$TAG"
  umoci unpack --image "$L:$TAG" "$WORK/bundle" >/dev/null
  cp -a "$ROOT/." "$WORK/bundle/rootfs/"
  find "$WORK/bundle/rootfs" -exec touch -h -d "@$EPOCH" {} +
  umoci repack --image "$L:$TAG" --history.created "$CREATED" \
    --history.created_by "deploy/build-image.sh: binaries, ldd libraries, /etc files" "$WORK/bundle"
  # The same config as deploy/Containerfile (keep the two in step).
  umoci config --image "$L:$TAG" --no-history \
    --config.user "$UID_GID:$UID_GID" \
    --config.entrypoint /usr/local/bin/sluice-scheduler \
    --config.cmd --bind --config.cmd 0.0.0.0:50050 \
    --config.workingdir /var/lib/sluice \
    --config.env PATH=/usr/local/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.env SLUICE_WORK_DIR=/var/lib/sluice \
    --config.exposedports 50050/tcp \
    --created "$CREATED" \
    --config.label "org.opencontainers.image.title=sluice" \
    --config.label "org.opencontainers.image.description=Sluice distributed dataflow: sluice-scheduler, sluice-executor and the sluice CLI" \
    --config.label "org.opencontainers.image.source=https://example.invalid/sluice" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.created=$CREATED" \
    --manifest.annotation "org.opencontainers.image.ref.name=$ref"
  umoci gc --layout "$L"
  # An oci-archive is a tar of an OCI layout; name the image as buildah does.
  if command -v skopeo >/dev/null; then
    skopeo copy --quiet "oci:$L:$TAG" "oci-archive:$OUT:$ref"
  else
    jq --arg r "$ref" '.manifests[0].annotations["org.opencontainers.image.ref.name"] = $r' "$L/index.json" >"$L/index.json.new"
    mv "$L/index.json.new" "$L/index.json"
    tar -C "$L" -cf "$OUT" .
  fi
}

TOOL="${SLUICE_IMAGE_TOOL:-}"
case "$TOOL" in
  buildah) build_buildah ;;
  umoci) build_umoci ;;
  "")
    if build_buildah; then TOOL=buildah
    else
      echo "buildah failed here (see above); falling back to umoci" >&2
      rm -f "$OUT"; build_umoci; TOOL=umoci
    fi ;;
  *) echo "error: SLUICE_IMAGE_TOOL must be buildah or umoci, not '$TOOL'" >&2; exit 2 ;;
esac

echo "built $OUT (sluice:$TAG, $(du -h "$OUT" | cut -f1), with $TOOL)"
