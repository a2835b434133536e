#!/usr/bin/env bash
# Quick start: installs what is missing, builds, starts a demo service on 127.0.0.1:8080 and
# pilotfish in front of it on 127.0.0.1:15000 with examples/quickstart/policy.yaml.
# Runs in the foreground; Ctrl-C drains pilotfish and stops the demo service.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
scripts/build.sh build

python3 examples/quickstart/demo_service.py 8080 &
demo_pid=$!
pf_pid=
cleanup() {
  [[ -n "$pf_pid" ]] && kill -TERM "$pf_pid" 2>/dev/null && wait "$pf_pid" 2>/dev/null || true
  kill "$demo_pid" 2>/dev/null || true
  wait "$demo_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

for _ in $(seq 50); do  # the demo service is up before pilotfish sends it anything
  curl -fsS -o /dev/null http://127.0.0.1:8080/ 2>/dev/null && break
  sleep 0.1
done
build/pilotfish check --config examples/quickstart/policy.yaml
build/pilotfish run --config examples/quickstart/policy.yaml &
pf_pid=$!
# /ready is 200 once the listener is bound and the demo service accepts connections.
build/pilotfish wait-ready --config examples/quickstart/policy.yaml --timeout 10s
cat <<MSG

pilotfish is running in front of the demo service. Try:
  curl -i http://127.0.0.1:15000/hello
  curl -i http://127.0.0.1:15000/nothing/../hello       # normalised to /hello
  curl -i -X CONNECT http://127.0.0.1:15000/            # refused: 405
  curl -s http://127.0.0.1:9901/metrics | grep requests_total
Edit examples/quickstart/policy.yaml and save: pilotfish reloads it in place
(curl -s http://127.0.0.1:9901/policy/history shows each change).
Access log lines (JSON) appear below. Ctrl-C drains and stops.

MSG
wait "$pf_pid"
