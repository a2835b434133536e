#!/usr/bin/env bash
# Builds the Dockerfile's two images with podman and checks them, on a machine without a Docker
# engine or registry access:
#   1. makes the base image the Dockerfile names (debian:12) with debootstrap from Debian's
#      package mirror, and `podman import`s it under that name;
#   2. `podman build --isolation=chroot --network host` of the sidecar (last stage) and of the
#      init stage (--target init);
#   3. runs `pilotfish version` and `pilotfish check` inside each image with
#      `buildah run --isolation chroot` (`podman run` fails here on rlimits);
#   4. prints the image sizes.
# Usage: test/image/build-and-check.sh [WORKDIR]   (as root; exits non-zero on any failure)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/var/tmp/pilotfish-image}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
tag=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)
mkdir -p "$work"

if ! podman image exists localhost/debian:12; then
  echo "== base image: debootstrap bookworm from $mirror"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | podman import - localhost/debian:12 > /dev/null
  rm -rf "$work/rootfs"
fi

echo "== podman build (sidecar)"
podman build --isolation=chroot --network host -t "localhost/pilotfish:$tag" -f "$root/Dockerfile" "$root"
echo "== podman build (init)"
podman build --isolation=chroot --network host --target init -t "localhost/pilotfish-init:$tag" -f "$root/Dockerfile" "$root"

check_image() {  # IMAGE ARGS...: runs the image's binary with ARGS in a buildah container
  local image=$1; shift
  local c
  c=$(buildah from "$image")
  trap 'buildah rm "$c" > /dev/null 2>&1 || true' RETURN
  buildah run --isolation chroot "$c" -- "$@"
}

echo "== inside the sidecar image"
check_image "localhost/pilotfish:$tag" /usr/local/bin/pilotfish version
# Its own default policy names identity files the Secret provides; the quick start's needs none.
c=$(buildah from "localhost/pilotfish:$tag")
buildah copy "$c" "$root/examples/quickstart/policy.yaml" /tmp/policy.yaml > /dev/null
buildah run --isolation chroot --user 1337:1337 "$c" -- /usr/local/bin/pilotfish check --config /tmp/policy.yaml
# Runs as the non-root user 1337, exposes the admin port, checks /live.
user=$(podman image inspect --format '{{.Config.User}}' "localhost/pilotfish:$tag")
[[ "$user" == "1337:1337" ]] || { echo "image user is '$user', not 1337:1337"; exit 1; }
podman image inspect --format '{{json .Config.ExposedPorts}}' "localhost/pilotfish:$tag" | grep -q '9901/tcp'
buildah inspect --format '{{json .Docker.Config.Healthcheck}}' "localhost/pilotfish:$tag" | grep -q -- '/live'
buildah rm "$c" > /dev/null

echo "== inside the init image"
check_image "localhost/pilotfish-init:$tag" /usr/local/bin/pilotfish version
c=$(buildah from "localhost/pilotfish-init:$tag")
buildah copy "$c" "$root/examples/kubernetes/policy.yaml" /tmp/policy.yaml > /dev/null
buildah run --isolation chroot "$c" -- /usr/local/bin/pilotfish iptables --policy /tmp/policy.yaml --uid 1337 --print \
  | grep -q -- '--to-ports 15006'
buildah run --isolation chroot "$c" -- iptables --version
buildah rm "$c" > /dev/null

echo "== sizes"
for image in "localhost/pilotfish:$tag" "localhost/pilotfish-init:$tag"; do
  size=$(podman image inspect --format '{{.Size}}' "$image")
  echo "$image $size bytes ($((size / 1024 / 1024)) MiB)"
done
