#!/usr/bin/env bash
# What a rate limit costs, and what Redis adds to it (SPEC sections 10 and 11; BENCHMARKS.md).
#
# Starts on 127.0.0.1, on ports chosen at run time: a fast upstream (examples/bench_support.rs),
# the AAD emulator (`aadgate dev-idp`), a real redis-server (persistence off) and three gateways
# that differ only in their rate limit, all with the access log on as users run it:
#
#   none   no [[rate_limits]]
#   local  one limit (key = "tenant", never exhausted) with in-process buckets
#   redis  the same limit with [store] kind = "redis": one Lua round trip per request
#
# Each round drives each gateway with wrk (the same cached token) for DURATION seconds at CONNS
# connections (throughput) and at one connection (added latency: p50/p99 of one request in
# flight at a time, where the difference is the time the limit adds). Ratios are taken within
# a round; the table shows their median. The gateways run one worker, pinned to SUT_CPU; wrk,
# the upstream, the emulator and Redis share LOAD_CPU (Redis stands for another machine).
#
# Environment: DURATION=8 ROUNDS=3 CONNS=32 WRK_THREADS=2 SUT_CPU=0 LOAD_CPU=1 BUILD=1 KEEP=0
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-2}
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
bench_start fleet

for tool in wrk redis-server taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install wrk redis-server util-linux curl python3)"
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ ${BUILD:-1} == 1 ]]; then
    log "building (profile dist)"
    (cd "$ROOT" && cargo build -q --profile dist --bin aadgate --example bench_support)
fi
GW_BIN=$TARGET_DIR/dist/aadgate
SUPPORT=$TARGET_DIR/dist/examples/bench_support
SUT=(taskset -c "$SUT_CPU")
LOAD=(taskset -c "$LOAD_CPU")


UP=$(free_port); IDP=$(free_port); REDIS=$(free_port)
"${LOAD[@]}" "$SUPPORT" upstream --listen "127.0.0.1:$UP" --threads 1 2>"$WORK/upstream.log" &
PIDS+=($!)
KEY=$WORK/bench-key.pem
"${LOAD[@]}" "$SUPPORT" mint --key "$KEY" --count 1 --out "$WORK/token.txt" --tid "$TID" --aud "$AUD" --roles Bench.Read >/dev/null
"${LOAD[@]}" "$GW_BIN" dev-idp --listen "127.0.0.1:$IDP" --key "$KEY" >"$WORK/idp.log" 2>&1 &
PIDS+=($!)
"${LOAD[@]}" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$UP" upstream
wait_port "$IDP" emulator
wait_port "$REDIS" redis
TOKEN=$(head -n 1 "$WORK/token.txt")
head -c 32 /dev/urandom >"$WORK/store.key"

LIMIT='
[[rate_limits]]
name = "bench"
key = "tenant"
rate = 1000000000
period = "1s"
burst = 1000000000
routes = ["api"]'
STORE="
[store]
kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS/0\"
encryption_key_file = \"$WORK/store.key\""

declare -A PORT GWPID
REDIS_PID=${PIDS[-1]}
for kind in none local redis; do
    PORT[$kind]=$(free_port)
    admin=$(free_port)
    bench_gateway_config "$WORK/$kind.toml" "${PORT[$kind]}" "$admin" "$IDP" "$UP" 1 "$WORK/$kind.sock"
    case $kind in
        local) echo "$LIMIT" >>"$WORK/$kind.toml" ;;
        redis) echo "$LIMIT$STORE" >>"$WORK/$kind.toml" ;;
    esac
    env -u RUST_LOG "${SUT[@]}" "$GW_BIN" run -c "$WORK/$kind.toml" >/dev/null 2>"$WORK/gateway-$kind.log" &
    PIDS+=($!)
    GWPID[$kind]=$!
    wait_port "${PORT[$kind]}" "gateway $kind"
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" && break
        sleep 0.1
    done
    headers=$(curl -sS -D - -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${PORT[$kind]}/api/x")
    grep -q '^HTTP/1.1 200' <<<"$headers" || die "gateway $kind refuses the token: $headers"
    if [[ $kind != none ]]; then
        grep -qi '^ratelimit:' <<<"$headers" || die "gateway $kind sends no RateLimit header"
    fi
done
if [[ "$(redis-cli -p "$REDIS" --scan --pattern 'aadgate:ratelimit:*' | wc -l)" -lt 1 ]]; then
    die "the redis gateway wrote no bucket"
fi

TICK=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# wrk's summary: requests/s, p50 and p99 in microseconds, and CPU microseconds per request of
# the gateway and of Redis.
measure() { # kind conns
    local out g0 g1 r0 r1
    g0=$(ticks "${GWPID[$1]}"); r0=$(ticks "$REDIS_PID")
    out=$("${LOAD[@]}" wrk -t"$(($2 < WRK_THREADS ? $2 : WRK_THREADS))" -c"$2" -d"${DURATION}s" --latency \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${PORT[$1]}/api/x" 2>&1) || die "wrk: $out"
    g1=$(ticks "${GWPID[$1]}"); r1=$(ticks "$REDIS_PID")
    echo "$out" >"$WORK/wrk-$1-$2-$round.txt"
    grep -q 'Non-2xx' <<<"$out" && die "non-2xx answers from $1: $out"
    python3 - "$out" "$((g1 - g0))" "$((r1 - r0))" "$TICK" <<'EOF'
import re, sys
text = sys.argv[1]
gw_ticks, redis_ticks, tick = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p = {m.group(1): us(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", text, re.M)}
n = int(re.search(r"(\d+) requests in", text).group(1))
print(f"{rps:.0f} {p['50']:.0f} {p['99']:.0f} {gw_ticks / tick * 1e6 / n:.1f} {redis_ticks / tick * 1e6 / n:.1f}")
EOF
}

log "warm-up"
round=0
for kind in none local redis; do DURATION=2 measure "$kind" "$CONNS" >/dev/null; done
declare -A RPS P50 P99 GWCPU RCPU
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS"
    for kind in none local redis; do
        read -r rps _ _ gcpu rcpu <<<"$(measure "$kind" "$CONNS")"
        RPS[$kind]+="$rps "
        GWCPU[$kind]+="$gcpu "
        RCPU[$kind]+="$rcpu "
        read -r _ p50 p99 _ _ <<<"$(measure "$kind" 1)"
        P50[$kind]+="$p50 "
        P99[$kind]+="$p99 "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { # a b: median over rounds of a/b
    paste -d' ' <(tr ' ' '\n' <<<"${RPS[$1]}" | grep -v '^$') <(tr ' ' '\n' <<<"${RPS[$2]}" | grep -v '^$') \
        | awk '{print $1/$2}' | median
}
echo "aadgate fleet benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $(nproc) cores, $ROUNDS rounds, ${DURATION}s each, $CONNS conns (throughput) and 1 conn (latency), 1 worker pinned to CPU $SUT_CPU; wrk, upstream, emulator, redis on CPU $LOAD_CPU"
printf '| %-6s | %8s | %-24s | %7s | %7s | %14s | %15s |\n' limit "req/s" "req/s per round" "p50 us" "p99 us" "gateway CPU us" "redis CPU us"
for kind in none local redis; do
    printf '| %-6s | %8s | %-24s | %7s | %7s | %14s | %15s |\n' "$kind" "$(median <<<"${RPS[$kind]}")" "${RPS[$kind]}" \
        "$(median <<<"${P50[$kind]}")" "$(median <<<"${P99[$kind]}")" "$(median <<<"${GWCPU[$kind]}")" "$(median <<<"${RCPU[$kind]}")"
done
echo "(req/s and CPU per request at $CONNS connections; p50/p99 at one connection)"
echo "local/none throughput: $(ratio local none)   redis/none: $(ratio redis none)   redis/local: $(ratio redis local)"
echo "added latency (median p50/p99, 1 conn): local +$(($(median <<<"${P50[local]}" | cut -d. -f1) - $(median <<<"${P50[none]}" | cut -d. -f1)))/+$(($(median <<<"${P99[local]}" | cut -d. -f1) - $(median <<<"${P99[none]}" | cut -d. -f1))) us, redis +$(($(median <<<"${P50[redis]}" | cut -d. -f1) - $(median <<<"${P50[none]}" | cut -d. -f1)))/+$(($(median <<<"${P99[redis]}" | cut -d. -f1) - $(median <<<"${P99[none]}" | cut -d. -f1))) us"
