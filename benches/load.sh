#!/usr/bin/env bash
# Load benchmark of the aadgate gateway against its targets (see BENCHMARKS.md).
#
# Starts on 127.0.0.1, on ports chosen at run time: a fast upstream (examples/bench_support.rs
# `upstream`), the AAD emulator (`aadgate dev-idp`), the gateway (`aadgate run`, access log on at
# its default level, as users run it) and three baselines: nginx (pass-through, no auth), the
# smallest pingora proxy (examples/bare_pingora.rs: the ceiling of anything built on pingora)
# and a hyper proxy verifying RS256 on every request (examples/hyper_jwt_proxy.rs). Drives them
# with wrk for DURATION seconds per scenario and prints a table with requests/s, p50, p99 and the
# ratios against the targets, each taken within a round. Exits 1 when a target is missed, 2
# when the setup fails.
#
# With PIN=1 (the default on 2 or more cores) each server under test runs alone on CPU
# SUT_CPU (taskset) with one worker, and wrk, the upstream and the emulator on LOAD_CPU, so the
# server's throughput is not shared with the load generator.
#
# Environment:
#   DURATION=8       seconds per scenario and round
#   ROUNDS=3         rounds of the side-by-side scenarios; ratios are the median of the rounds
#   UNIQUE_DURATION  seconds of the unique-token scenario per round (default DURATION/2, so that
#                    ROUNDS slices of the pre-minted tokens last without a token seen twice)
#   CONNS=32         wrk connections (throughput scenarios)
#   MODERATE_CONNS=1 wrk connections for the added-latency comparison: one request in flight at a
#                    time (~10k req/s here), so the difference is the time authentication adds to
#                    a request, not time spent queueing behind other requests for the 2 cores
#   WRK_THREADS=2    wrk threads
#   WORKERS=1        worker threads of the gateway and of bare pingora, nginx worker_processes,
#                    hyper proxy threads
#   PIN=1            pin servers under test to SUT_CPU=0 and the rest to LOAD_CPU=1 (needs 2 cores)
#   UNIQUE=300000    pre-minted distinct valid tokens (cached between runs in target/bench-load):
#                    the first FILL fill the token cache before the rounds, and each round of the
#                    unique-token scenario uses its own slice of the rest
#   FILL=100000      distinct tokens put into the cache before the rounds (its capacity in the
#                    benchmark configuration): the unique-token rounds then measure a full cache
#   SOAK=60          seconds of the RSS-flatness run (SOAK=300 for the full 5-minute check)
#   ACCESS_LOG=1     also measure the gateway with the access log off (RUST_LOG=warn), to show its cost
#   PERF=0           1: perf record the gateway during the cached and unique scenarios
#   KEEP=0           1: keep the temp dir (logs, configs)
#   BUILD=1          0: use the binaries already in target/dist (no cargo build)
#
# The machine this was written for has 2 cores: wrk, the upstream and the server under test all
# share them, so absolute figures are lower than on a dedicated load-generator setup; the ratios
# (same machine, same wrk, same upstream, same worker count) are what the targets are about.
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
UNIQUE_DURATION=${UNIQUE_DURATION:-$(((DURATION + 1) / 2))}
CONNS=${CONNS:-32}
MODERATE_CONNS=${MODERATE_CONNS:-1}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-1}
PIN=${PIN:-$(($(nproc) >= 2 ? 1 : 0))}
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
UNIQUE=${UNIQUE:-300000}
FILL=${FILL:-100000}
SOAK=${SOAK:-60}
ACCESS_LOG=${ACCESS_LOG:-1}
PERF=${PERF:-0}
KEEP=${KEEP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DATA=$TARGET_DIR/bench-load          # signing key and minted tokens, reused between runs
RESULTS=$DATA/results
bench_start load

# ---------------------------------------------------------------- tools and build
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx)
command -v curl >/dev/null || need_apt+=(curl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ${BUILD:-1} == 1 ]]; then
    log "building (profile dist: release + thin LTO, as deployed)"
    (cd "$ROOT" && cargo build --profile dist --quiet --bin aadgate --example bench_support --example bare_pingora --example hyper_jwt_proxy) || die "build failed"
fi
GW_BIN=$TARGET_DIR/dist/aadgate
SUPPORT=$TARGET_DIR/dist/examples/bench_support
BARE_BIN=$TARGET_DIR/dist/examples/bare_pingora
HYPER_BIN=$TARGET_DIR/dist/examples/hyper_jwt_proxy
# "${SUT[@]}" CMD: a server under test on its own CPU; "${LOAD[@]}" CMD: the rest on the other.
SUT=()
LOAD=()
if [[ $PIN == 1 ]]; then
    SUT=(taskset -c "$SUT_CPU")
    LOAD=(taskset -c "$LOAD_CPU")
fi
mkdir -p "$DATA" "$RESULTS"

# ---------------------------------------------------------------- helpers


metric() { # name-with-labels-prefix -> value (sum over matching lines)
    curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%.0f\n", s }'
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# wrk with a Lua script that prints one machine-readable line; latencies in microseconds.
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local s = summary.duration / 1e6
    io.write(string.format("RESULT requests=%d rps=%.1f p50=%d p99=%d errors=%d non2xx=%d\n",
        summary.requests, summary.requests / s, latency:percentile(50), latency:percentile(99),
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.errors.status))
end
EOF

# Tokens from a file, one per line; each wrk thread takes every n-th line. MODE=cycle wraps
# around; MODE=once stops the thread when its share is used up.
cat >"$WORK/tokens.lua" <<'EOF'
local counter = 0
local threads = {}
function setup(thread)
    thread:set("id", counter)
    counter = counter + 1
    table.insert(threads, thread)
end
local tokens, idx, stop_at_end, path
function init(args)
    local file, nthreads, limit = args[1], tonumber(args[2]), tonumber(args[4] or "0")
    stop_at_end = args[3] == "once"
    path = args[5] or "/api/bench"
    local offset = tonumber(args[6] or "0")
    tokens = {}
    local n = 0
    for line in io.lines(file) do
        if n >= offset then
            local k = n - offset
            if limit > 0 and k >= limit then break end
            if k % nthreads == id then tokens[#tokens + 1] = line end
        end
        n = n + 1
    end
    idx = 0
end
function request()
    idx = idx + 1
    if idx > #tokens then
        if stop_at_end then wrk.thread:stop() end
        idx = 1
    end
    return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. tokens[idx] })
end
EOF
cat "$WORK/report.lua" >>"$WORK/tokens.lua"

LAST=""
# CPU time (user + system, clock ticks) of a set of processes, from /proc.
cpu_ticks() {
    local p
    for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0; done | awk '{ s += $1 } END { print s + 0 }'
}
TICK=$(getconf CLK_TCK)
SERVER_PIDS=()   # the server under test (gateway, or nginx's workers), for CPU per request
run_wrk() { # name conns duration url [extra wrk args...]
    local name=$1 conns=$2 dur=$3 url=$4
    shift 4
    local out c0 c1 u0 u1
    local threads=$((conns < WRK_THREADS ? conns : WRK_THREADS))
    c0=$(cpu_ticks "${SERVER_PIDS[@]}"); u0=$(cpu_ticks "$UP_PID")
    out=$("${LOAD[@]}" wrk -t"$threads" -c"$conns" -d"${dur}s" --timeout 5s "$url" "$@" 2>&1) || die "wrk failed for $name: $out"
    c1=$(cpu_ticks "${SERVER_PIDS[@]}"); u1=$(cpu_ticks "$UP_PID")
    echo "$out" >"$WORK/wrk-$name.txt"
    LAST=$(grep '^RESULT' <<<"$out" || true)
    [[ -n $LAST ]] || die "no result from wrk for $name: $out"
    # CPU microseconds per request of the server under test and of the upstream.
    LAST+=" $(awk -v s=$((c1 - c0)) -v u=$((u1 - u0)) -v t="$TICK" -v n="$(field requests)" 'BEGIN { if (n > 0) printf "srvcpu=%.1f upcpu=%.1f", s / t * 1e6 / n, u / t * 1e6 / n; else print "srvcpu=0 upcpu=0" }')"
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$LAST"; }

# Each scenario may run once per round: ALL_* keep every round's figure (in round order), the
# table shows the median, and a ratio is the median of the per-round ratios.
declare -A RPS P50 P99 NOTE ALL_RPS ALL_P50 ALL_P99 ALL_SRV ALL_UPC SRV UPC
record() { # scenario note
    ALL_SRV[$1]+="$(field srvcpu) "
    ALL_UPC[$1]+="$(field upcpu) "
    SRV[$1]=$(median ${ALL_SRV[$1]})
    UPC[$1]=$(median ${ALL_UPC[$1]})
    ALL_RPS[$1]+="$(field rps) "
    ALL_P50[$1]+="$(field p50) "
    ALL_P99[$1]+="$(field p99) "
    RPS[$1]=$(median ${ALL_RPS[$1]})
    P50[$1]=$(median ${ALL_P50[$1]})
    P99[$1]=$(median ${ALL_P99[$1]})
    NOTE[$1]=${2:-}
    log "$(printf '%-22s %10s req/s  p50 %6s us  p99 %6s us  %s' "$1" "$(field rps)" "$(field p50)" "$(field p99)" "${NOTE[$1]}")"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Median over rounds of an expression of two scenarios' figures: per_round ARRAY a b AWK-EXPR
per_round() {
    local -n arr=$1
    paste -d' ' <(printf '%s\n' ${arr[$2]}) <(printf '%s\n' ${arr[$3]}) | awk "{ print $4 }" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) printf "%.3f\n", a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
rounds_of() { local -n arr=$1; printf '%s' "${arr[$2]% }" | tr ' ' '/'; }

# ---------------------------------------------------------------- tokens
KEY=$DATA/bench-key.pem
mint() { # kind count file
    if [[ -s $3 && -s $KEY && -n $(find "$3" -mmin -720 2>/dev/null) && $(wc -l <"$3") -ge $2 ]]; then
        log "reusing $3"
    else
        "$SUPPORT" mint --key "$KEY" --kind "$1" --count "$2" --out "$3" --tid "$TID" --aud "$AUD" --roles Bench.Read --lifetime 86400
    fi
}
((UNIQUE > FILL)) || die "UNIQUE ($UNIQUE) must exceed FILL ($FILL): the rounds need tokens the fill did not use"
mint valid "$UNIQUE" "$DATA/tokens-valid.txt"
mint badsig 2000 "$DATA/tokens-badsig.txt"
mint unknownkid 2000 "$DATA/tokens-unknownkid.txt"
ONE_TOKEN=$(head -n 1 "$DATA/tokens-valid.txt")

# ---------------------------------------------------------------- processes
UP=$(free_port); IDP=$(free_port); GW=$(free_port); ADMIN=$(free_port); NG=$(free_port)
BARE=$(free_port); HYPER=$(free_port)

"${LOAD[@]}" "$SUPPORT" upstream --listen "127.0.0.1:$UP" --threads 1 2>"$WORK/upstream.log" &
UP_PID=$!
PIDS+=("$UP_PID")
"${LOAD[@]}" "$GW_BIN" dev-idp --listen "127.0.0.1:$IDP" --key "$KEY" >"$WORK/idp.log" 2>&1 &
PIDS+=($!)
wait_port "$UP" upstream
wait_port "$IDP" emulator

bench_gateway_config "$WORK/aadgate.toml" "$GW" "$ADMIN" "$IDP" "$UP" "$WORKERS" "$WORK/upgrade.sock"

GW_PID=""
start_gateway() { # RUST_LOG value ("default": unset, as users run it)
    if [[ $1 == default ]]; then
        env -u RUST_LOG "${SUT[@]}" "$GW_BIN" run -c "$WORK/aadgate.toml" 2>"$WORK/gateway-$1.log" >/dev/null &
    else
        RUST_LOG=$1 "${SUT[@]}" "$GW_BIN" run -c "$WORK/aadgate.toml" 2>"$WORK/gateway-$1.log" >/dev/null &
    fi
    GW_PID=$!
    PIDS+=("$GW_PID")
    SERVER_PIDS=("$GW_PID")
    wait_port "$GW" gateway
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && return 0
        sleep 0.1
    done
    die "gateway not ready (see $WORK/gateway-$1.log)"
}
stop_gateway() {
    kill "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null || return 0
        sleep 0.1
    done
}

mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$NG;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"${SUT[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/logs/stderr.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NG" nginx

"${SUT[@]}" "$BARE_BIN" --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$UP" --workers "$WORKERS" 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_port "$BARE" "bare pingora"
curl -fsS "http://127.0.0.1:$IDP/common/discovery/v2.0/keys" >"$WORK/jwks.json" || die "no JWKS from the emulator"
"${SUT[@]}" "$HYPER_BIN" --listen "127.0.0.1:$HYPER" --upstream "127.0.0.1:$UP" --jwks "$WORK/jwks.json" --aud "$AUD" --threads "$WORKERS" 2>"$WORK/hyper.log" &
HYPER_PID=$!
PIDS+=("$HYPER_PID")
wait_port "$HYPER" "hyper RS256 proxy"
curl -fsS -o /dev/null -H "Authorization: Bearer $ONE_TOKEN" "http://127.0.0.1:$HYPER/x" || die "the hyper proxy refuses a valid token"

start_gateway default
curl -fsS -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $ONE_TOKEN" "http://127.0.0.1:$GW/api/check" | grep -q 200 \
    || die "a valid token is not accepted: $(curl -sS -H "Authorization: Bearer $ONE_TOKEN" "http://127.0.0.1:$GW/api/check")"

perf_start() { # name
    PERF_PID=""
    if [[ $PERF == 1 ]]; then
        perf record -F 499 -g -o "$RESULTS/perf-$1.data" -p "$GW_PID" -- sleep "$DURATION" >/dev/null 2>&1 &
        PERF_PID=$!
    fi
}
perf_stop() { [[ -n ${PERF_PID:-} ]] && wait "$PERF_PID" 2>/dev/null || true; }

# ---------------------------------------------------------------- scenarios
log "warm-up"
run_wrk warmup "$CONNS" 2 "http://127.0.0.1:$GW/anon/x" -s "$WORK/report.lua"
run_wrk warmup2 "$CONNS" 2 "http://127.0.0.1:$GW/api/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
run_wrk warmup3 "$CONNS" 2 "http://127.0.0.1:$NG/x" -s "$WORK/report.lua"
run_wrk warmup4 "$CONNS" 2 "http://127.0.0.1:$BARE/x" -s "$WORK/report.lua"
run_wrk warmup5 "$CONNS" 2 "http://127.0.0.1:$HYPER/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"

# The token cache is filled to its capacity before the rounds: a gateway that has run for a
# while has a full cache, and every new token replaces an entry (or is refused admission) in
# memory already in use. While the cache fills, each new entry is new memory the kernel has to
# fault in and zero: that rate is reported separately (an info row of the targets table).
log "memory: $FILL distinct tokens into the cache"
HITS_BEFORE_FILL=$(( $(metric aadgate_token_cache_misses_total) + $(metric aadgate_token_cache_hits_total) ))
FILL_T0=$(date +%s.%N)
# wrk keeps running for -d even when every thread stopped: poll the miss counter (bounded) and
# stop wrk once every token of the fill set went through the gateway.
"${LOAD[@]}" wrk -t"$WRK_THREADS" -c"$CONNS" -d300s "http://127.0.0.1:$GW/api/x" -s "$WORK/tokens.lua" -- "$DATA/tokens-valid.txt" "$WRK_THREADS" once "$FILL" >"$WORK/wrk-fill.txt" 2>&1 &
FILL_PID=$!
PIDS+=("$FILL_PID")
for ((i = 0; i < 600; i++)); do
    sleep 0.5
    kill -0 "$FILL_PID" 2>/dev/null || break
    [[ $(( $(metric aadgate_token_cache_misses_total) + $(metric aadgate_token_cache_hits_total) - HITS_BEFORE_FILL )) -ge $FILL ]] && break
done
FILL_T1=$(date +%s.%N)
kill "$FILL_PID" 2>/dev/null || true
wait "$FILL_PID" 2>/dev/null || true
MISSES=$(metric aadgate_token_cache_misses_total)
FILL_RPS=$(awk -v n="$((MISSES + $(metric aadgate_token_cache_hits_total) - HITS_BEFORE_FILL))" -v a="$FILL_T0" -v b="$FILL_T1" 'BEGIN { printf "%.0f", n / (b - a) }')
sleep 1
RSS_100K=$(metric process_resident_memory_bytes)
RSS_100K_MIB=$((RSS_100K / 1048576))
log "after fill: cache misses since start $MISSES (>= $FILL distinct tokens verified, ~$FILL_RPS req/s while filling), RSS ${RSS_100K_MIB} MiB"

log "scenarios: ${DURATION}s each, $ROUNDS rounds, $CONNS connections, $WRK_THREADS wrk threads, $WORKERS workers"
UNIQUE_MISSES=0
UNIQUE_HITS=0
UNIQUE_NON2XX=0
UNIQUE_SLICE=$(((UNIQUE - FILL) / ROUNDS))
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    run_wrk anon "$CONNS" "$DURATION" "http://127.0.0.1:$GW/anon/x" -s "$WORK/report.lua"
    record anonymous
    # The same request bytes as the cached-token scenario (a ~1 KB Authorization header,
    # forwarded upstream since pass_authorization defaults to true), on the anonymous route:
    # isolates the cost of authentication from the cost of carrying the token.
    run_wrk anon_hdr "$CONNS" "$DURATION" "http://127.0.0.1:$GW/anon/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    record anonymous_same_header "anonymous route, same Authorization header"

    perf_start "cached-$round"
    run_wrk cached "$CONNS" "$DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    perf_stop
    record cached_token "non2xx=$(field non2xx)"

    SERVER_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true))
    run_wrk nginx "$CONNS" "$DURATION" "http://127.0.0.1:$NG/x" -s "$WORK/report.lua"
    record nginx_passthrough
    SERVER_PIDS=("$BARE_PID")
    run_wrk bare "$CONNS" "$DURATION" "http://127.0.0.1:$BARE/x" -s "$WORK/report.lua"
    record bare_pingora "ProxyHttp with only upstream_peer"
    SERVER_PIDS=("$HYPER_PID")
    run_wrk hyper "$CONNS" "$DURATION" "http://127.0.0.1:$HYPER/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    record hyper_rs256 "RS256 verified per request, no cache"
    SERVER_PIDS=("$GW_PID")

    # Same Lua request() path as the token scenarios, to show the load generator's own overhead.
    run_wrk anon_lua "$CONNS" "$DURATION" "http://127.0.0.1:$GW/anon/x" -s "$WORK/tokens.lua" -- "$DATA/tokens-badsig.txt" "$WRK_THREADS" cycle 0 /anon/x
    record anonymous_lua "wrk Lua request() per call"

    # Each round replays its own slice of the pre-minted tokens after the fill set: no token is
    # seen twice, and the cache is full (steady state).
    m0=$(metric aadgate_token_cache_misses_total); h0=$(metric aadgate_token_cache_hits_total)
    perf_start "unique-$round"
    run_wrk unique "$CONNS" "$UNIQUE_DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/tokens.lua" -- "$DATA/tokens-valid.txt" "$WRK_THREADS" cycle "$UNIQUE_SLICE" /api/x $((FILL + (round - 1) * UNIQUE_SLICE))
    perf_stop
    m1=$(metric aadgate_token_cache_misses_total); h1=$(metric aadgate_token_cache_hits_total)
    UNIQUE_MISSES=$((UNIQUE_MISSES + m1 - m0))
    UNIQUE_HITS=$((UNIQUE_HITS + h1 - h0))
    UNIQUE_NON2XX=$((UNIQUE_NON2XX + $(field non2xx)))
    record unique_tokens "cache full; misses=$UNIQUE_MISSES hits=$UNIQUE_HITS non2xx=$UNIQUE_NON2XX (all rounds)"

    # Added latency: moderate load, the two routes back to back.
    run_wrk anon_mod "$MODERATE_CONNS" "$DURATION" "http://127.0.0.1:$GW/anon/x" -s "$WORK/report.lua"
    record anonymous_moderate "$MODERATE_CONNS connections"
    run_wrk cached_mod "$MODERATE_CONNS" "$DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    record cached_moderate "$MODERATE_CONNS connections"
done

f0=$(metric 'aadgate_jwks_fetch_total')
run_wrk badsig "$CONNS" "$DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/tokens.lua" -- "$DATA/tokens-badsig.txt" "$WRK_THREADS" cycle 0
record invalid_bad_signature "401s=$(field non2xx)/$(field requests)"
BADSIG_OK=$([[ $(field non2xx) == "$(field requests)" ]] && echo 1 || echo 0)
run_wrk unknownkid "$CONNS" "$DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/tokens.lua" -- "$DATA/tokens-unknownkid.txt" "$WRK_THREADS" cycle 0
f1=$(metric 'aadgate_jwks_fetch_total')
JWKS_FETCHES=$((f1 - f0))
# min_refetch_interval = 30s: at most one kid-miss fetch per started 30 s of the two runs.
JWKS_ALLOWED=$(( (2 * DURATION + 29) / 30 ))
record invalid_unknown_kid "401s=$(field non2xx)/$(field requests) jwks_fetches=$JWKS_FETCHES (allowed <= $JWKS_ALLOWED)"
UNKNOWN_OK=$([[ $(field non2xx) == "$(field requests)" ]] && echo 1 || echo 0)

log "RSS flatness: ${SOAK}s at cached-token load, sampled every 5 s"
SAMPLES=()
"${LOAD[@]}" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${SOAK}s" -H "Authorization: Bearer $ONE_TOKEN" "http://127.0.0.1:$GW/api/x" >"$WORK/wrk-soak.txt" 2>&1 &
SOAK_PID=$!
PIDS+=("$SOAK_PID")
for ((i = 0; i < SOAK / 5; i++)); do
    sleep 5
    SAMPLES+=("$(rss_kib "$GW_PID")")
done
wait "$SOAK_PID" 2>/dev/null || true
# Flat: every sample after the first within +-5% of the first (the cache is already full).
read -r RSS_FIRST RSS_MIN RSS_MAX FLAT < <(printf '%s\n' "${SAMPLES[@]}" | awk 'NR == 1 { f = $1; mn = $1; mx = $1 } { if ($1 < mn) mn = $1; if ($1 > mx) mx = $1 } END { ok = (mx <= f * 1.05 && mn >= f * 0.95) ? 1 : 0; print f, mn, mx, ok }')
log "RSS samples (KiB): ${SAMPLES[*]}"

if [[ $ACCESS_LOG == 1 ]]; then
    log "the gateway with the access log off (RUST_LOG=warn), for its cost"
    stop_gateway
    start_gateway warn
    run_wrk warmup6 "$CONNS" 2 "http://127.0.0.1:$GW/api/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    run_wrk anon_log "$CONNS" "$DURATION" "http://127.0.0.1:$GW/anon/x" -s "$WORK/report.lua"
    record anonymous_no_log "RUST_LOG=warn"
    run_wrk cached_log "$CONNS" "$DURATION" "http://127.0.0.1:$GW/api/x" -s "$WORK/report.lua" -H "Authorization: Bearer $ONE_TOKEN"
    record cached_no_log "RUST_LOG=warn"
fi

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
verdict() { if "$@"; then echo met; else echo "NOT MET"; fi; }

{
echo
echo "aadgate load benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $(nproc) cores, $ROUNDS rounds, ${DURATION}s/scenario (unique tokens ${UNIQUE_DURATION}s), $CONNS conns, $WRK_THREADS wrk threads, $WORKERS workers per server, $([[ $PIN == 1 ]] && echo "servers pinned to CPU $SUT_CPU, load on CPU $LOAD_CPU" || echo "not pinned"), gateway access log on (default level)"
echo
printf '| %-22s | %10s | %8s | %8s | %-26s | %10s | %10s | %s\n' scenario "req/s" "p50 us" "p99 us" "req/s per round" "server CPU" "upstr. CPU" notes
printf '|%s|%s|%s|%s|%s|%s|%s|%s\n' "------------------------" "------------" "----------" "----------" "----------------------------" "------------" "------------" "------"
for s in nginx_passthrough bare_pingora hyper_rs256 anonymous anonymous_same_header cached_token unique_tokens invalid_bad_signature invalid_unknown_kid anonymous_lua anonymous_moderate cached_moderate anonymous_no_log cached_no_log; do
    [[ -n ${RPS[$s]:-} ]] || continue
    printf '| %-22s | %10s | %8s | %8s | %-26s | %10s | %10s | %s\n' "$s" "${RPS[$s]}" "${P50[$s]}" "${P99[$s]}" "$(rounds_of ALL_RPS "$s")" "${SRV[$s]}" "${UPC[$s]}" "${NOTE[$s]}"
done
echo
r1=$(per_round ALL_RPS cached_token anonymous '$1 / $2')
r2=$(per_round ALL_RPS cached_token nginx_passthrough '$1 / $2')
rbare=$(per_round ALL_RPS cached_token bare_pingora '$1 / $2')
rabare=$(per_round ALL_RPS anonymous bare_pingora '$1 / $2')
rhyper=$(per_round ALL_RPS cached_token hyper_rs256 '$1 / $2')
rbng=$(per_round ALL_RPS bare_pingora nginx_passthrough '$1 / $2')
r3=$(per_round ALL_RPS unique_tokens anonymous '$1 / $2')
r3l=$(per_round ALL_RPS unique_tokens anonymous_lua '$1 / $2')
d50=$(per_round ALL_P50 cached_moderate anonymous_moderate '$1 - $2' | awk '{ printf "%.0f", $1 }')
d99=$(per_round ALL_P99 cached_moderate anonymous_moderate '$1 - $2' | awk '{ printf "%.0f", $1 }')
rb=$(ratio "${RPS[invalid_bad_signature]}" "${RPS[unique_tokens]}")
rk=$(ratio "${RPS[invalid_unknown_kid]}" "${RPS[unique_tokens]}")
echo "server CPU / upstr. CPU: microseconds of CPU (user + system) per request of the server under test (the gateway, or nginx's processes) and of the upstream, median over rounds."
echo "Ratios and latency differences: median of the $ROUNDS per-round values (each round runs the scenarios back to back)."
echo
echo "| target | measured | verdict |"
echo "|---|---|---|"
echo "| cached / bare pingora >= 0.90 | $rbare | $(verdict ge "$rbare" 0.90) |"
echo "| cached / hyper RS256 proxy >= 1.3 | $rhyper | $(verdict ge "$rhyper" 1.3) |"
echo "| anonymous / bare pingora >= 0.95 | $rabare | $(verdict ge "$rabare" 0.95) |"
echo "| (info) cached / anonymous | $r1 | - |"
echo "| (info) cached / anonymous with the same Authorization header | $(per_round ALL_RPS cached_token anonymous_same_header '$1 / $2') | - |"
echo "| (info) cached / nginx | $r2 | - |"
echo "| (info) bare pingora / nginx | $rbng | - |"
echo "| unique / anonymous >= 0.60 | $r3 (vs anonymous with the same wrk Lua path: $r3l) | $(verdict ge "$r3" 0.60) |"
echo "| (info) unique tokens while the cache fills (before the rounds) / unique, cache full | $(ratio "$FILL_RPS" "${RPS[unique_tokens]}") ($FILL_RPS req/s) | - |"
echo "| unique run had no cache hits | hits=$UNIQUE_HITS | $(verdict test "$UNIQUE_HITS" -eq 0) |"
echo "| added latency p50 <= 50 us ($MODERATE_CONNS conns) | ${d50} us | $(verdict le "$d50" 50) |"
echo "| added latency p99 <= 200 us ($MODERATE_CONNS conns) | ${d99} us | $(verdict le "$d99" 200) |"
echo "| bad-signature flood costs no more than valid (rps ratio vs unique >= 0.90, all 401) | $rb | $(verdict test "$BADSIG_OK" = 1 -a "$(awk -v r="$rb" 'BEGIN{print (r>=0.9)}')" = 1) |"
echo "| unknown-kid flood costs no more than valid (rps ratio vs unique >= 0.90, all 401) | $rk | $(verdict test "$UNKNOWN_OK" = 1 -a "$(awk -v r="$rk" 'BEGIN{print (r>=0.9)}')" = 1) |"
echo "| unknown-kid flood: JWKS fetches within rate limit | $JWKS_FETCHES (<= $JWKS_ALLOWED) | $(verdict test "$JWKS_FETCHES" -le "$JWKS_ALLOWED") |"
echo "| RSS with 100k cached tokens <= 256 MiB | ${RSS_100K_MIB} MiB (misses since start: $MISSES) | $(verdict test "$RSS_100K_MIB" -le 256 -a "$MISSES" -ge "$FILL") |"
echo "| RSS flat +-5% over ${SOAK}s (SOAK=300 for the full check) | first ${RSS_FIRST} KiB, min ${RSS_MIN}, max ${RSS_MAX} | $(verdict test "$FLAT" = 1) |"
if [[ -n ${RPS[cached_no_log]:-} ]]; then
    echo "| (info) access log cost: cached with log / without | $(ratio "${RPS[cached_token]}" "${RPS[cached_no_log]}"); anonymous: $(ratio "${RPS[anonymous]}" "${RPS[anonymous_no_log]}") | - |"
fi
} | tee "$RESULTS/latest.md"

if grep -q "NOT MET" "$RESULTS/latest.md"; then exit 1; fi
