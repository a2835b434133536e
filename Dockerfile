# pilotfish: the sidecar image, and the init image that applies the pod's iptables rules.
#
#   podman build -t pilotfish:0.1.0 .                        # the sidecar (the last stage)
#   podman build -t pilotfish-init:0.1.0 --target init .     # the init container
#
# Three stages on Debian 12:
#   build    the same meson build as the README's, then `pilotfish check` on every example policy;
#   init     Debian with iptables and the binary, for `pilotfish iptables --apply` (runs as root
#            once, before the pod's containers; it needs iptables, the sidecar does not);
#   runtime  from scratch: only the binary, the shared libraries it links (as ldd lists them)
#            and a passwd entry for the non-root user 1337, which `pilotfish iptables --uid 1337`
#            exempts from interception.

FROM debian:12 AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      meson ninja-build pkg-config g++ libuv1-dev node-llhttp libssl-dev libyaml-cpp-dev prometheus-cpp-dev nlohmann-json3-dev libnghttp2-dev \
      openssl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY meson.build meson_options.txt ./
COPY subprojects/ subprojects/
COPY include/ include/
COPY src/ src/
COPY test/meson.build test/
COPY examples/ examples/
RUN meson setup /build --buildtype=release -Dtests=false \
 && ninja -C /build \
 && strip /build/pilotfish \
 && /build/pilotfish version
# Every example policy must load, with the certificates the mTLS example's script makes (the
# Kubernetes one reads them where its Secret is mounted).
RUN sh examples/mtls/make-certs.sh /tmp/certs \
 && mkdir -p /etc/pilotfish/certs \
 && cp /tmp/certs/users.pem /etc/pilotfish/certs/tls.crt && cp /tmp/certs/users.key /etc/pilotfish/certs/tls.key \
 && cp /tmp/certs/ca.pem /etc/pilotfish/certs/ca.crt \
 && for f in examples/quickstart/policy.yaml examples/kubernetes/policy.yaml; do /build/pilotfish check --config "$f"; done \
 && for f in examples/mtls/frontend.yaml examples/mtls/users.yaml; do \
      sed "s#certs/#/tmp/certs/#" "$f" > /tmp/check.yaml && /build/pilotfish check --config /tmp/check.yaml; done
# The runtime stage's files: the binary, its shared libraries, the loader, the user.
RUN mkdir -p /out/usr/local/bin /out/etc/pilotfish /out/tmp \
 && cp /build/pilotfish /out/usr/local/bin/ \
 && ldd /build/pilotfish | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u \
    | while read -r lib; do mkdir -p "/out$(dirname "$lib")" && cp -L "$lib" "/out$lib"; done \
 && echo "pilotfish:x:1337:1337:pilotfish:/nonexistent:/sbin/nologin" > /out/etc/passwd \
 && echo "pilotfish:x:1337:" > /out/etc/group \
 && cp examples/kubernetes/policy.yaml /out/etc/pilotfish/policy.yaml \
 && chmod 1777 /out/tmp \
 && rm -rf /etc/pilotfish/certs /tmp/certs

FROM debian:12 AS init
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      iptables libuv1 libssl3 libyaml-cpp0.7 libprometheus-cpp-core1.0 libnghttp2-14 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*
COPY --from=build /build/pilotfish /usr/local/bin/pilotfish
ENTRYPOINT ["/usr/local/bin/pilotfish", "iptables"]
CMD ["--policy", "/etc/pilotfish/policy.yaml", "--uid", "1337", "--ipv4-only", "--apply"]

FROM scratch AS runtime
COPY --from=build /out/ /
USER 1337:1337
EXPOSE 9901
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["/usr/local/bin/pilotfish", "wait-ready", "--admin", "127.0.0.1:9901", "--path", "/live", "--timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/pilotfish", "run"]
CMD ["--config", "/etc/pilotfish/policy.yaml"]
