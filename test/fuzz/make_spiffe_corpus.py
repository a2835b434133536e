#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_spiffe (test/fuzz/corpus/spiffe): IDs and allow lists as text,
certificate recipes (inputs that start with 'X', read by fuzz_spiffe.cc's build_certificate) and
two DER certificates made with the openssl command (its keys are new on each run, so those two
files change when this is run again; the others do not).
    test/fuzz/make_spiffe_corpus.py"""
import os
import subprocess
import tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "spiffe")

# Recipe operations (op byte, length byte, value; see build_certificate).
URI, SPIFFE_URI, DNS, EMAIL, IP, CN, FLAGS, NEXT_SAN = range(8)


def op(code, value=b""):
    if code == NEXT_SAN:
        return bytes([code])
    if len(value) >= 255:
        return bytes([code, 255]) + value  # 255: the rest of the input
    return bytes([code, len(value)]) + value


def flags(basic=0, usage=0, extended=0):
    """basic: 0 none, 1 CA:FALSE, 2 CA:TRUE; usage: 0 none, 1 digitalSignature, 2 keyCertSign;
    extended: 0 none, 1 server+client, 2 server, 3 client, 4 codeSigning."""
    return op(FLAGS, bytes([basic + 3 * usage + 9 * extended]))


def recipe(*ops):
    return b"X" + b"".join(ops)


TEXT = {
    "id_workload": b"spiffe://shop.local/ns/shop/sa/orders",
    "id_domain_only": b"spiffe://example.org",
    "id_odd_segments": b"spiffe://a.b-c_d/.../x./.y/A_Z-0.9",
    "id_refused": b"spiffe://Shop.local:443/ns/../sa/%2F?q#f",
    "allow_prefix": b"spiffe://shop.local/ns/shop/sa/orders-*\nspiffe://a/b\nspiffe://shop.local/ns/shop/sa/orders-v2",
    "allow_exact": b"spiffe://a/b\nspiffe://a/bc",
    "allow_star_inside": b"spiffe://a/*/b\nspiffe://*\nspiffe://a/x/b",
}

RECIPES = {
    "x_svid": recipe(op(SPIFFE_URI, b"shop.local/ns/shop/sa/orders"), op(DNS, b"orders.shop"),
                     flags(basic=1, usage=1, extended=1)),
    "x_cn_only": recipe(op(CN, b"spiffe://shop.local/ns/shop/sa/orders"), op(DNS, b"orders.shop")),
    "x_two_uris": recipe(op(SPIFFE_URI, b"a/b"), op(URI, b"spiffe://a/c")),
    "x_nul_in_uri": recipe(op(URI, b"spiffe://a/b\x00.evil"), op(EMAIL, b"a@b\x00c"), op(IP, b"\x7f\x00\x00\x01")),
    "x_two_extensions": recipe(op(SPIFFE_URI, b"a/b"), op(NEXT_SAN), op(SPIFFE_URI, b"a/c")),
    "x_ca": recipe(op(SPIFFE_URI, b"trust.local"), flags(basic=2)),
    "x_server_only": recipe(op(SPIFFE_URI, b"a/server"), flags(extended=2)),
    "x_long_uri": recipe(op(CN, b"x" * 80), op(SPIFFE_URI, b"a/" + b"b/" * 1100 + b"c")),
}


def der(subject, san):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cert.der")
        cmd = ["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-keyout", os.path.join(d, "key.pem"),
               "-subj", subject, "-days", "1", "-outform", "DER", "-out", path]
        if san:
            cmd += ["-addext", "subjectAltName=" + san, "-addext", "basicConstraints=critical,CA:FALSE"]
        subprocess.run(cmd, check=True, capture_output=True)
        with open(path, "rb") as f:
            return f.read()


def main():
    os.makedirs(OUT, exist_ok=True)
    files = dict(TEXT)
    files.update(RECIPES)
    files["der_svid"] = der("/CN=orders", "URI:spiffe://shop.local/ns/shop/sa/orders,DNS:orders.shop")
    files["der_cn_only"] = der("/CN=spiffe:\\/\\/shop.local\\/ns\\/shop\\/sa\\/orders", None)
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print("%d seeds in %s" % (len(files), OUT))


if __name__ == "__main__":
    main()
