#!/usr/bin/env bash
# Installs what pilotfish needs from Debian 12 packages, by purpose, and only what is missing.
#   scripts/install-deps.sh [PURPOSE...]   PURPOSE: build (the default), test, image, bench
#     build   compile and run pilotfish (scripts/quickstart.sh installs this alone)
#     test    the whole test suite (scripts/test.sh): build, plus the tools the tests drive (a
#             headless Chromium for the status page), the
#             image test's container tools, Prometheus, and clang for the fuzz targets (scripts/fuzz.sh)
#     image   podman and buildah for the container images (test/image/build-and-check.sh)
#     bench   the benchmark peers, load generators and counters (test/bench/bench.py, instructions.py, counts.py)
#   scripts/install-deps.sh --list PURPOSE...   prints the packages of those purposes and installs nothing
#   scripts/install-deps.sh --bench             the same as `build bench` (kept for old scripts)
set -euo pipefail

build=(meson ninja-build pkg-config g++ libuv1-dev node-llhttp libssl-dev libyaml-cpp-dev prometheus-cpp-dev
       nlohmann-json3-dev libnghttp2-dev curl openssl python3)
image=(podman buildah debootstrap fuse-overlayfs uidmap)
test=("${build[@]}" "${image[@]}" libgtest-dev libgmock-dev procps prometheus iproute2 iptables util-linux
      python3-yaml python3-h2 python3-grpcio nghttp2-client clang libclang-rt-14-dev
      chromium chromium-driver python3-selenium)
bench=("${build[@]}" wrk haproxy nginx-light util-linux valgrind nghttp2-client strace)

list=0
purposes=()
for arg in "$@"; do
  case "$arg" in
    --list) list=1 ;;
    --bench) purposes+=(build bench) ;;
    build|test|image|bench) purposes+=("$arg") ;;
    *) echo "install-deps.sh: unknown purpose '$arg' (build, test, image, bench)" >&2; exit 2 ;;
  esac
done
((${#purposes[@]})) || purposes=(build)

packages=()
for p in "${purposes[@]}"; do
  declare -n group="$p"
  packages+=("${group[@]}")
done
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | awk '!seen[$0]++')

if ((list)); then
  printf '%s\n' "${packages[@]}"
  exit 0
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
  # Services that packages ship (nginx, haproxy, prometheus) must not start on install: the
  # tests and the benchmark start their own instances on loopback ports.
  policy_rc=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy_rc ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc" && chmod +x "$policy_rc" && created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if ((created_policy)); then rm -f "$policy_rc"; fi
fi
