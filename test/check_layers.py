#!/usr/bin/env python3
"""Dependencies flow one way: a directory of src/ includes only directories of lower layers,
and include/pilotfish/ (the pure core: the policy model and loader interface, the parsers and
matchers that take text and give answers) includes nothing of src/ and no libuv or OpenSSL.
Only src/http/http1_codec includes llhttp, and only src/http/http2_codec includes nghttp2 (with
src/http/http2_memory, its allocator).

Run from anywhere: python3 test/check_layers.py [SOURCE_ROOT]. Prints each violation and exits
1, or prints the layers and exits 0.
"""
import pathlib
import re
import sys

# Top to bottom. A directory may include its own files and those of any layer below its own.
LAYERS = [
    ["main.cc"],
    ["server"],                         # process, workers, admin, reload
    ["proxy"],                          # sessions: HTTP/1.1, TCP, interception; WorkerContext
    ["http", "upstream", "policy", "intercept"],  # codec and routing; pools and resilience; loader
    ["gateway", "metrics"],             # admission pieces (JWT, rate limits); counters
    ["net"],                            # streams and loops
    ["tls", "log"],
    ["json"],
    ["text"],
]

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    problems = []
    src = root / "src"
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".h", ".cc"):
            continue
        rel = path.relative_to(src)
        here = rel.parts[0]
        if here not in rank:
            problems.append(f"src/{rel}: directory {here!r} has no layer in test/check_layers.py")
            continue
        for kind, target in INCLUDE.findall(path.read_text(errors="replace")):
            if kind == "<" and target == "llhttp.h" and rel.parent.name + "/" + rel.stem != "http/http1_codec":
                problems.append(f"src/{rel} includes <llhttp.h>: only http/http1_codec decodes HTTP/1.1")
            if kind == "<" and target.startswith("nghttp2/") and \
                    rel.parent.name + "/" + rel.stem not in ("http/http2_codec", "http/http2_memory"):
                problems.append(f"src/{rel} includes <{target}>: only http/http2_codec speaks HTTP/2 "
                                "(and http/http2_memory gives it memory)")
            if kind != '"' or "/" not in target:
                continue
            there = target.split("/")[0]
            if there in ("pilotfish", here) or there not in rank:
                continue
            if rank[there] <= rank[here]:
                problems.append(f"src/{rel} includes {target}: {here} may not depend on {there}")
    for path in sorted((root / "include" / "pilotfish").glob("*.h")):
        for kind, target in INCLUDE.findall(path.read_text(errors="replace")):
            if kind == '"' and not target.startswith("pilotfish/"):
                problems.append(f"include/pilotfish/{path.name} includes {target}: the core includes only itself")
            if kind == "<" and (target == "uv.h" or target.startswith("openssl/") or target.startswith("yaml-cpp/")):
                problems.append(f"include/pilotfish/{path.name} includes <{target}>: the core has no I/O library")
    if problems:
        print("\n".join(problems))
        return 1
    print("layers, top to bottom:", " > ".join("/".join(layer) for layer in LAYERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
