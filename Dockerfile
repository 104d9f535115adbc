# berth in a container: `docker build -t berth .` then see README "Deploy".
#
# Two stages: the build on the Rust image the toolchain file names (it has the C compiler and
# `make` that SQLite's and jemalloc's builds need), the runtime on Debian slim. The runtime
# runs as an unprivileged user with its data on a volume.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin berth \
 && install -D -m 0755 target/release/berth /out/berth \
 && /out/berth man > /out/berth.1 \
 && /out/berth completion bash > /out/berth.bash

FROM debian:bookworm-slim
# curl for the HEALTHCHECK only; reqwest brings its own TLS roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 berth \
 && useradd --system --uid 10001 --gid berth --home-dir /var/lib/berth --shell /usr/sbin/nologin berth \
 && install -d -o berth -g berth -m 0700 /var/lib/berth
COPY --from=build /out/berth /usr/local/bin/berth
COPY --from=build /out/berth.1 /usr/local/share/man/man1/berth.1
COPY --from=build /out/berth.bash /usr/share/bash-completion/completions/berth

USER berth
# The data directory (SQLite files, admin token, master key) and the runners directory
# beside it. Back it up with `berth backup`, never by copying it while berth runs.
VOLUME ["/var/lib/berth"]
ENV BERTH_DATA_DIR=/var/lib/berth/data \
    BERTH_RUNNERS_DIR=/var/lib/berth/runners \
    BERTH_LISTEN=0.0.0.0:8080 \
    BERTH_LOG_FORMAT=json \
    BERTH_DRAIN_DELAY=5s
EXPOSE 8080
# /readyz turns 503 as soon as a shutdown begins (SIGTERM), so the orchestrator stops
# sending work during --drain-delay.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
