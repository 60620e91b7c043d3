#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim where no image registry can be reached:
# Debian bookworm (Python 3.11) from the Debian mirror apt already uses, imported into Docker.
# Cached: does nothing when the image exists.  Usage: scripts/make-base-image.sh [IMAGE]
set -euo pipefail

IMAGE=${1:-fusion-search-base:bookworm}
SUITE=${BASE_SUITE:-bookworm}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: cached"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

# The Debian mirror this machine's apt already uses for the suite, else Debian's own.
mirror=${DEBIAN_MIRROR:-$(apt-cache policy 2>/dev/null | awk -v s="$SUITE/main" '$3 == s {print $2; exit}' || true)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/fusion-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base image $IMAGE: debootstrap $SUITE from $mirror"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# What python:3.11-slim offers a Dockerfile: `python` and `pip` on PATH, pip allowed to install
# into the system Python (no PEP 668 marker), no apt lists or caches.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
# HTTPS from this machine is verified against its own CA bundle (it may hold a local CA).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "base image $IMAGE: built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
