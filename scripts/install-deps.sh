#!/usr/bin/env bash
# Installs what pilotfish needs from Debian 12 packages, and only what is missing.
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --bench  also the benchmark peers (wrk, haproxy, nginx)
set -euo pipefail

packages=(meson ninja-build pkg-config g++ libuv1-dev node-llhttp libssl-dev libyaml-cpp-dev
          prometheus-cpp-dev libgtest-dev libgmock-dev python3 curl openssl procps prometheus
          iproute2 iptables util-linux python3-yaml podman buildah debootstrap fuse-overlayfs uidmap)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(wrk haproxy nginx-light util-linux)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "pilotfish: installing packages needs root (run as root or with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Services that packages ship (nginx, haproxy) must not start on install: the benchmark
  # starts its own instances on loopback ports.
  policy_rc=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy_rc ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc" && chmod +x "$policy_rc" && created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if ((created_policy)); then rm -f "$policy_rc"; fi
fi
