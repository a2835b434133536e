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
# --format docker: the OCI format has no HEALTHCHECK and would drop it.
podman build --isolation=chroot --network host --format docker -t "localhost/pilotfish:$tag" -f "$root/Dockerfile" "$root"
echo "== podman build (init)"
podman build --isolation=chroot --network host --format docker --target init -t "localhost/pilotfish-init:$tag" -f "$root/Dockerfile" "$root"

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
buildah rm "$c" > /dev/null
# Runs as the non-root user 1337, exposes the admin port, checks /live.
podman image inspect "localhost/pilotfish:$tag" | python3 -c '
import json, sys
d = json.load(sys.stdin)[0]
config = d["Config"]
health = d.get("Healthcheck") or d.get("HealthCheck") or config.get("Healthcheck") or {}
problems = []
if config.get("User") != "1337:1337": problems.append("user is %r, not 1337:1337" % config.get("User"))
if "9901/tcp" not in (config.get("ExposedPorts") or {}): problems.append("port 9901 is not exposed")
if "/live" not in health.get("Test", []): problems.append("no HEALTHCHECK on /live: %r" % health)
if config.get("Entrypoint") != ["/usr/local/bin/pilotfish", "run"]: problems.append("entry point %r" % config.get("Entrypoint"))
if problems: sys.exit("sidecar image: " + "; ".join(problems))
print("sidecar image: user 1337, port 9901, health check", " ".join(health["Test"]))
'
# The sidecar runs in the image (chroot isolation shares this network), its health check command
# passes against it, and `pilotfish drain` stops it.
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 1\nadmin: {address: 127.0.0.1:%s}\nlisteners: [{name: l, address: 127.0.0.1:0, routes: [{cluster: c}]}]\nclusters: [{name: c, endpoints: [127.0.0.1:9]}]\n' \
  "$admin" > "$work/run-policy.yaml"
c=$(buildah from "localhost/pilotfish:$tag")
buildah copy --chown 1337:1337 "$c" "$work/run-policy.yaml" /tmp/policy.yaml > /dev/null
buildah run --isolation chroot --user 1337:1337 "$c" -- /usr/local/bin/pilotfish run --config /tmp/policy.yaml \
  > "$work/run.log" 2>&1 &
runner=$!
# The health check and the drain run in a second container of the image: buildah serialises
# commands on one container, so they must not wait for the sidecar's own `buildah run`.
probe=$(buildah from "localhost/pilotfish:$tag")
buildah run --isolation chroot --user 1337:1337 "$probe" -- \
  /usr/local/bin/pilotfish wait-ready --admin "127.0.0.1:$admin" --path /live --timeout 30s \
  || { kill "$runner" 2>/dev/null; cat "$work/run.log"; exit 1; }
buildah run --isolation chroot --user 1337:1337 "$probe" -- /usr/local/bin/pilotfish drain --admin "127.0.0.1:$admin"
wait "$runner" || { cat "$work/run.log"; exit 1; }
grep -q "drained; exiting" "$work/run.log" || { cat "$work/run.log"; exit 1; }
buildah rm "$c" "$probe" > /dev/null

echo "== inside the init image"
check_image "localhost/pilotfish-init:$tag" /usr/local/bin/pilotfish version
c=$(buildah from "localhost/pilotfish-init:$tag")
buildah copy "$c" "$root/examples/kubernetes/policy.yaml" /tmp/policy.yaml > /dev/null
buildah run --isolation chroot "$c" -- /usr/local/bin/pilotfish iptables --policy /tmp/policy.yaml --uid 1337 --ipv4-only --print \
  | grep -q -- '--to-ports 15006'
buildah run --isolation chroot "$c" -- iptables --version
buildah rm "$c" > /dev/null

echo "== sizes"
for image in "localhost/pilotfish:$tag" "localhost/pilotfish-init:$tag"; do
  size=$(podman image inspect --format '{{.Size}}' "$image")
  echo "$image $size bytes ($((size / 1024 / 1024)) MiB)"
done
