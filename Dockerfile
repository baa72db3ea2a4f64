# volley in a container: `docker build -t volley .` from the checkout, then e.g.
#   docker run --rm volley --help
#   docker run --rm -p 7001:7001/udp -p 9100:9100 -v "$PWD/keys:/etc/volley:ro" volley \
#       serve --listen 0.0.0.0:7001 --key /etc/volley/server.key --metrics 0.0.0.0:9100
# The key file must be readable by the image's user (uid 65532) and by no group or others
# (mode 0600 or 0400): volley refuses a secret key file others may read.

# Build stage: the release binary of volley-cli only (Rust 1.88 or newer; AWS-LC's X25519 needs
# the C compiler this image has).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p volley-cli \
 && install -m 0755 target/release/volley /volley

# Runtime stage: glibc and libgcc, no shell, no package manager, a non-root user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /volley /usr/local/bin/volley
USER 65532:65532
# The UDP port of the examples (and, with --forward tcp://, its TCP stream port), and the
# metrics port (/metrics, /healthz, /readyz).
EXPOSE 7001/udp 7001/tcp 9100/tcp
ENTRYPOINT ["/usr/local/bin/volley"]
CMD ["--help"]
