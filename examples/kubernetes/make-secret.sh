#!/bin/sh
# Prints the Secret payments-identity that deployment.yaml mounts, from PEM files:
#   examples/kubernetes/make-secret.sh tls.crt tls.key ca.crt | kubectl apply -f -
# Rotating the certificate is applying a new Secret: the kubelet swaps the files and pilotfish
# uses them for new handshakes (open connections continue).
set -eu
[ $# -eq 3 ] || { echo "usage: $0 CERT KEY CA" >&2; exit 2; }
b64() { base64 -w0 < "$1"; }
cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: payments-identity
  namespace: shop
type: Opaque
data:
  tls.crt: $(b64 "$1")
  tls.key: $(b64 "$2")
  ca.crt: $(b64 "$3")
YAML
