#!/bin/sh
# Makes a demo trust domain for examples/mtls: a CA and two workload certificates (X.509-SVIDs:
# one spiffe:// URI SAN each, EC P-256, valid 30 days) in DIR (default: ./certs next to this
# script). For a real mesh the certificates come from your CA (SPIRE, cert-manager, ...).
set -eu
dir=${1:-$(dirname "$0")/certs}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout ca.key -out ca.pem -subj "/CN=shop.local demo CA" 2>/dev/null
for sa in frontend users; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$sa.key" -out "$sa.csr" \
    -subj "/CN=$sa" 2>/dev/null
  printf 'subjectAltName=URI:spiffe://shop.local/ns/shop/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
    "$sa" > "$sa.ext"
  openssl x509 -req -in "$sa.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$sa.ext" -out "$sa.pem" 2>/dev/null
  rm -f "$sa.csr" "$sa.ext"
done
rm -f ca.srl
echo "certificates in $dir"
