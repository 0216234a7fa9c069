#!/usr/bin/env bash
# What the shared store adds to an app-only token exchange that misses the in-process cache
# (SPEC section 10; BENCHMARKS.md "The shared store on a cache-missing exchange").
#
# Starts a real redis-server (persistence off) on a loopback port chosen at run time and runs
# examples/exchange_rtt.rs against it: in one process the AAD emulator and three exchangers,
# each asked for tenants it has never seen — without a store (the token request alone), with
# Redis for a tenant new to the fleet (one script finds no entry and takes the fleet's lock, then
# the token request; the entry is written after the answer) and with Redis for a tenant another
# replica just fetched (the script returns the entry; no token request). The three are
# interleaved call by call. Prints p50/p99/mean in microseconds per row, ROUNDS times.
#
# Environment: COUNT=500 ROUNDS=3 BUILD=1 KEEP=0
set -euo pipefail

COUNT=${COUNT:-500}
ROUNDS=${ROUNDS:-3}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
bench_start exchange-rtt

for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install redis-server python3)"
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ ${BUILD:-1} == 1 ]]; then
    log "building (profile release)"
    (cd "$ROOT" && cargo build -q --release --example exchange_rtt)
fi
BIN=$TARGET_DIR/release/examples/exchange_rtt

REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$REDIS" ping >/dev/null || die "redis-server did not start"

log "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%FT%TZ)"
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS ($COUNT calls per row)"
    redis-cli -p "$REDIS" flushall >/dev/null
    "$BIN" --redis "redis://127.0.0.1:$REDIS/0" --count "$COUNT"
done
