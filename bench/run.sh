#!/usr/bin/env bash
# One command for every benchmark figure in docs/benchmarks.md: installs the classical peers
# (Debian packages) when missing, builds pqmesh in release, runs bench/src/bin/mesh-bench.rs
# (latency, CPU, memory, bulk, handshakes, idle connections, CA issuance, policy fan-out; pqmesh
# and the peers side by side, repeated) and rewrites docs/benchmarks.md and docs/benchmarks/*.svg.
#
#   bench/run.sh                  full run (3 repeats, ~10 min on 2 cores)
#   bench/run.sh --repeats 5      options after the first are passed to mesh-bench
#   bench/run.sh --smoke          < 60 s check that the harness works end to end (debug build,
#                                 report to a temporary file, docs/ untouched); exits non-zero
#                                 when a scenario produced no figure
# Not part of ./test.sh's timed runs: the machine is shared, so figures are noisy (ratios
# against peers measured in the same run are what the report leads with).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
ARGS=()
for a in "$@"; do
    [[ "$a" == --smoke ]] && SMOKE=1
    ARGS+=("$a")
done

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v nginx >/dev/null || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v stunnel4 >/dev/null || need+=(stunnel4)
if ((${#need[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "bench/run.sh: missing ${need[*]}; run as root (apt-get install) or install them" >&2
        exit 1
    fi
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts the packaged nginx/haproxy services on install; the benchmark runs its own.
for svc in nginx haproxy; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done

# 10,000 idle connections and 10,000 policy streams need file descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PKGS=(-p pqmesh-sidecar -p pqmesh-control-plane -p pqmesh-gateway -p pqmesh-bench)
if ((SMOKE)); then
    cargo build -q "${PKGS[@]}" --bins
    BIN=target/debug
    OUT=$(mktemp -d)
    trap 'rm -rf "$OUT"' EXIT
    start=$SECONDS
    "$BIN/mesh-bench" --bin-dir "$BIN" --out "$OUT/benchmarks.md" --plots "$OUT/plots" \
        --command "bench/run.sh --smoke" "${ARGS[@]}" | tee "$OUT/stdout"
    table=$(sed -n '/^## Targets/,/^Anchors/p' "$OUT/benchmarks.md")
    echo "$table"
    # Every target row must carry a figure ("–" is what the report prints for a missing one).
    if [[ -z "$table" ]] || grep -qE '\| – (ms|/s|MiB|KiB|vCPU|rps)|NaN|inf' <<<"$table"; then
        echo "bench smoke: a target has no figure" >&2
        exit 1
    fi
    # Each scenario of issue 16 has its row, with a figure.
    for row in 'requests/s at saturation, closed loop, [0-9]+ keep-alive connections, 1 KiB \| [^|]+ \| [0-9]+ rps' \
        'RS256 JWT and a scope on every request[^|]*\| [^|]+ \| [0-9]+ rps' \
        'server-side vCPU per 1,000 rps with the JWT policy \| report \| [0-9.]+ vCPU' \
        'ML-DSA-65 certificates, next to ECDSA P-256 \| reported \| ML-DSA-65 [0-9]+ /s' \
        'RSS per idle mTLS connection[^|]*\| [^|]+ \| -?[0-9.]+ KiB' \
        'pair RSS after the load runs[^|]*\| [^|]+ \| [0-9.]+ MiB' \
        'the same CPU target on an HTTP relay port[^|]*\| [^|]+ \| [0-9.]+ vCPU' \
        'saturation on an HTTP relay port[^|]*\| [^|]+ \| [0-9]+ rps' \
        'the same on an HTTP relay port \([0-9]+ connections[^|]*\| [^|]+ \| -?[0-9.]+ KiB' \
        'edge gateway: added latency p50 / p99[^|]*X25519MLKEM768[^|]*\| [^|]+ \| -?[0-9.]+ / -?[0-9.]+ ms \| edge-nginx -?[0-9.]+ / -?[0-9.]+ ms; edge-nginx-mtls -?[0-9.]+ / -?[0-9.]+ ms' \
        'edge gateway: requests/s at saturation[^|]*\| [^|]+ \| [0-9]+ rps \| edge-nginx [0-9]+ rps; edge-nginx-mtls [0-9]+ rps' \
        'edge gateway: vCPU per 1,000 rps[^|]*\| [^|]+ \| [0-9.]+ vCPU \([0-9.]+ \+ [0-9.]+\) \| edge-nginx [0-9.]+ vCPU'; do
        grep -qE "$row" <<<"$table" || { echo "bench smoke: no row matching: $row" >&2; exit 1; }
    done
    grep -qE 'X25519MLKEM768 [0-9]+ /s \| X25519 [0-9]+ /s' <<<"$table" || {
        echo "bench smoke: no PQ-share figures" >&2
        exit 1
    }
    grep -q '^Floor of this machine' "$OUT/benchmarks.md" || {
        echo "bench smoke: no plaintext-relay floor" >&2
        exit 1
    }
    for f in latency saturation throughput handshakes cpu-memory; do
        [[ -s "$OUT/plots/$f.svg" ]] || { echo "bench smoke: plot $f.svg missing" >&2; exit 1; }
    done
    grep -q '^HEADLINE' "$OUT/stdout" || { echo "bench smoke: no headline" >&2; exit 1; }
    echo "bench smoke: harness OK in $((SECONDS - start)) s"
else
    cargo build --release "${PKGS[@]}" --bins
    BIN=target/release
    "$BIN/mesh-bench" --bin-dir "$BIN" --out docs/benchmarks.md --plots docs/benchmarks \
        --command "bench/run.sh${ARGS[*]:+ ${ARGS[*]}}" "${ARGS[@]}"
    echo "wrote docs/benchmarks.md and docs/benchmarks/*.svg"
fi
