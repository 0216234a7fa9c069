#!/usr/bin/env bash
# Instructions per request of the gateway, counted by valgrind's callgrind: a figure that does
# not depend on what else the machine is doing (see BENCHMARKS.md). Throughput on a shared
# 2-core machine moves by tens of percent between runs; these counts repeat to within ~1 %.
#
# Starts on 127.0.0.1, on ports chosen at run time: the fast upstream (examples/bench_support.rs),
# the AAD emulator (`aadgate dev-idp`), the gateway under callgrind (`workers = 1`, access log on
# at its default level as users run it; LOG=warn turns it off) and, as the ceiling, the smallest
# pingora proxy under callgrind (examples/bare_pingora.rs, one worker). Sends N requests on one
# keep-alive connection (curl) per scenario, and prints the instructions the server executed per
# request:
#
#   bare_pingora          the smallest pingora proxy (a `ProxyHttp` with only `upstream_peer`)
#   anonymous             anonymous route, no Authorization header
#   anonymous_same_header anonymous route, the ~1 KB Authorization header of the token scenarios
#   cached_token          authenticated route, one token (verified once, then cache hits)
#   unique_tokens         authenticated route, a different valid token per request (RS256 each)
#   bad_signature         authenticated route, tokens with a wrong signature (401)
#
# With GRPC=1 (the default) it also counts gRPC unary calls (`bench_support grpc-load`, one
# HTTP/2 connection, one call in flight, the ~1 KB token on every call) to a gRPC echo service
# over h2c, through a second gateway (`h2c = true`) and a second bare pingora (`--h2c true`),
# both under callgrind:
#
#   grpc_bare_pingora     the smallest pingora proxy, h2c in and out
#   grpc_anonymous        anonymous route (`strip_prefix`), the token forwarded
#   grpc_authenticated    authenticated route, one token (cache hits), the token forwarded
#   grpc_noauthz          as grpc_authenticated with `pass_authorization = false`
#
# Environment: N=2000 requests (and calls) per scenario; GRPC=1; LOG (the gateway's RUST_LOG; unset: the default,
# info, with the access log); BUILD=1 (0: use target/dist as it is);
# KEEP=0 (1: keep the callgrind files for callgrind_annotate); GW_BIN and SUPPORT to measure
# other builds of `aadgate` and `bench_support` (e.g. two commits side by side, with BUILD=0).
# Note: valgrind reports the CPU without SHA extensions, so SHA-256 counts run the AVX code
# path; on hardware with SHA-NI the cache key costs less than its count suggests.
set -euo pipefail

N=${N:-2000}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DATA=$TARGET_DIR/bench-load
bench_start instr

command -v valgrind >/dev/null || {
    log "installing valgrind"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
command -v curl >/dev/null || die "curl is needed"

if [[ ${BUILD:-1} == 1 ]]; then
    log "building (profile dist)"
    (cd "$ROOT" && cargo build --profile dist --quiet --bin aadgate --example bench_support --example bare_pingora) || die "build failed"
fi
GW_BIN=${GW_BIN:-$TARGET_DIR/dist/aadgate}
SUPPORT=${SUPPORT:-$TARGET_DIR/dist/examples/bench_support}
BARE_BIN=${BARE_BIN:-$TARGET_DIR/dist/examples/bare_pingora}
mkdir -p "$DATA"


# Tokens: the load benchmark's files when present (same key), else a small set of our own.
KEY=$DATA/bench-key.pem
VALID=$DATA/tokens-valid.txt
BADSIG=$DATA/tokens-badsig.txt
if [[ ! -s $KEY || ! -s $VALID || $(wc -l <"$VALID") -le $N || ! -s $BADSIG ]]; then
    VALID=$WORK/tokens-valid.txt
    BADSIG=$WORK/tokens-badsig.txt
    "$SUPPORT" mint --key "$KEY" --kind valid --count $((N + 1)) --out "$VALID" --tid "$TID" --aud "$AUD" --roles Bench.Read --lifetime 86400
    "$SUPPORT" mint --key "$KEY" --kind badsig --count "$N" --out "$BADSIG" --tid "$TID" --aud "$AUD" --roles Bench.Read --lifetime 86400
fi
ONE_TOKEN=$(head -n 1 "$VALID")
GRPC=${GRPC:-1}

UP=$(free_port); IDP=$(free_port); GW=$(free_port); ADMIN=$(free_port); BARE=$(free_port)
"$SUPPORT" upstream --listen "127.0.0.1:$UP" --threads 1 2>"$WORK/upstream.log" &
PIDS+=($!)
"$GW_BIN" dev-idp --listen "127.0.0.1:$IDP" --key "$KEY" >"$WORK/idp.log" 2>&1 &
PIDS+=($!)

mkdir -p "$WORK/conf"
bench_gateway_config "$WORK/conf/aadgate.toml" "$GW" "$ADMIN" "$IDP" "$UP" 1 "$WORK/upgrade.sock"
wait_http "http://127.0.0.1:$IDP/common/discovery/v2.0/keys" emulator

if [[ -n ${LOG:-} ]]; then export RUST_LOG=$LOG; else unset RUST_LOG; fi
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    "$GW_BIN" run -c "$WORK/conf/aadgate.toml" >/dev/null 2>"$WORK/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
    "$BARE_BIN" --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$UP" --workers 1 >/dev/null 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
log "gateway under callgrind (pid $GW_PID), waiting until ready"
wait_http "http://127.0.0.1:$ADMIN/readyz" gateway
wait_http "http://127.0.0.1:$BARE/x" "bare pingora"

# Warm-up: connections to the upstream, the first token verified, lazily built state.
for _ in 1 2 3; do
    curl -fsS -o /dev/null "http://127.0.0.1:$GW/anon/x"
    curl -fsS -o /dev/null -H "Authorization: Bearer $ONE_TOKEN" "http://127.0.0.1:$GW/api/x"
    curl -fsS -o /dev/null "http://127.0.0.1:$BARE/x"
done
# The server the next scenarios measure: its port, its pid, and a URL that wakes it (a
# callgrind dump is taken when the process next runs code).
PORT=$GW
PID=$GW_PID
WAKE=http://127.0.0.1:$ADMIN/healthz

# One curl config per scenario: N transfers on one connection, each with its own header.
transfers() { # path token-file|"" fixed-token|""
    local path=$1 file=$2 fixed=$3 i=0 tok
    while ((i < N)); do
        if [[ -n $file ]]; then read -r tok || break; else tok=$fixed; fi
        ((i > 0)) && printf 'next\n'
        printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' "$PORT" "$path"
        [[ -z $tok ]] || printf 'header = "Authorization: Bearer %s"\n' "$tok"
        i=$((i + 1))
    done < <(if [[ -n $file ]]; then tail -n +2 "$file"; fi)
}

DUMPS=0
declare -A IR STATUS
# Asks callgrind for the dump NAME of process PID and sets IR[NAME] to its instructions per
# request; a dump is taken when the process next runs code, so WAKE (a command) is run until
# the dump appears.
collect_dump() { # name pid wake-command...
    local name=$1 pid=$2 i f="" total
    shift 2
    callgrind_control -d "$name" "$pid" >/dev/null 2>&1
    DUMPS=$((DUMPS + 1))
    for ((i = 0; i < 300; i++)); do
        "$@" >/dev/null 2>&1 || true
        f=$(grep -lx "desc: Trigger: dump $name" "$WORK"/callgrind.* 2>/dev/null | head -n 1 || true)
        [[ -n $f ]] && break
        sleep 0.2
    done
    [[ -n $f ]] || die "no callgrind dump for $name"
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
    IR[$name]=$((total / N))
}
scenario() { # name expected-status path token-file fixed-token
    local name=$1 want=$2
    transfers "$3" "$4" "$5" >"$WORK/$name.curl"
    callgrind_control -z "$PID" >/dev/null 2>&1
    curl -sS -K "$WORK/$name.curl" >"$WORK/$name.status"
    collect_dump "$name" "$PID" curl -fsS -o /dev/null "$WAKE"
    STATUS[$name]=$(sort "$WORK/$name.status" | uniq -c | awk '{ printf "%s%s×%s", sep, $1, $2; sep = " " }')
    grep -qv "^$want\$" "$WORK/$name.status" && die "$name: unexpected statuses ${STATUS[$name]}"
    log "$(printf '%-22s %9d instructions/request  (%s)' "$name" "${IR[$name]}" "${STATUS[$name]}")"
}

scenario anonymous 200 /anon/x "" ""
scenario anonymous_same_header 200 /anon/x "" "$ONE_TOKEN"
scenario cached_token 200 /api/x "" "$ONE_TOKEN"
scenario unique_tokens 200 /api/x "$VALID" ""
scenario bad_signature 401 /api/x "$BADSIG" ""
PORT=$BARE
PID=$BARE_PID
WAKE=http://127.0.0.1:$BARE/x
scenario bare_pingora 200 /x "" ""

# ---------------------------------------------------------------- gRPC
if [[ $GRPC == 1 ]]; then
    ECHO=$(free_port); GW2=$(free_port); ADMIN2=$(free_port); BARE2=$(free_port)
    "$SUPPORT" grpc-upstream --listen "127.0.0.1:$ECHO" 2>"$WORK/grpc-echo.log" &
    PIDS+=($!)
    head -n 1 "$VALID" >"$WORK/grpc-token.txt"
    mkdir -p "$WORK/conf2"
    bench_gateway_config "$WORK/conf2/aadgate.toml" "$GW2" "$ADMIN2" "$IDP" "$UP" 1 "$WORK/upgrade2.sock"
    bench_grpc_routes "$WORK/conf2/aadgate.toml" "$ECHO"
    wait_port "$ECHO" "gRPC echo"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
        "$GW_BIN" run -c "$WORK/conf2/aadgate.toml" >/dev/null 2>"$WORK/gateway2.log" &
    GW2_PID=$!
    PIDS+=("$GW2_PID")
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
        "$BARE_BIN" --listen "127.0.0.1:$BARE2" --upstream "127.0.0.1:$ECHO" --workers 1 --h2c true >/dev/null 2>"$WORK/bare2.log" &
    BARE2_PID=$!
    PIDS+=("$BARE2_PID")
    wait_http "http://127.0.0.1:$ADMIN2/readyz" "gateway (h2c)"
    wait_port "$BARE2" "bare pingora (h2c)"
    grpc_calls() { # url calls
        "$SUPPORT" grpc-load --url "$1" --token-file "$WORK/grpc-token.txt" --connections 1 --concurrency 1 --calls "$2"
    }
    # Each grpc-load run opens a connection of its own: 20 calls first warm the gateway's
    # upstream connection and lazily built state; the counted run's own connection set-up is
    # spread over its N calls.
    grpc_scenario() { # name url pid
        local name=$1 url=$2 pid=$3
        grpc_calls "$url" 20 >/dev/null || die "$name: the warm-up calls failed"
        callgrind_control -z "$pid" >/dev/null 2>&1
        grpc_calls "$url" "$N" >"$WORK/$name.out" 2>&1 || die "$name: $(cat "$WORK/$name.out")"
        collect_dump "$name" "$pid" grpc_calls "$url" 1
        STATUS[$name]="$N OK"
        log "$(printf '%-22s %9d instructions/call' "$name" "${IR[$name]}")"
    }
    grpc_scenario grpc_bare_pingora "http://127.0.0.1:$BARE2" "$BARE2_PID"
    grpc_scenario grpc_anonymous "http://127.0.0.1:$GW2/anon-grpc" "$GW2_PID"
    grpc_scenario grpc_authenticated "http://127.0.0.1:$GW2" "$GW2_PID"
    grpc_scenario grpc_noauthz "http://127.0.0.1:$GW2/noauthz-grpc" "$GW2_PID"
fi

echo
echo "aadgate instructions per request (callgrind) — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $N requests per scenario, workers = 1, gateway RUST_LOG=${LOG:-(default: info, access log on)}"
echo
echo "| scenario | instructions/request | vs anonymous | vs bare pingora |"
echo "|---|---|---|---|"
for s in bare_pingora anonymous anonymous_same_header cached_token unique_tokens bad_signature; do
    awk -v s="$s" -v v="${IR[$s]}" -v a="${IR[anonymous]}" -v b="${IR[bare_pingora]}" 'BEGIN { printf "| %s | %d | %+d (%.2f×) | %.2f× |\n", s, v, v - a, v / a, v / b }'
done
if [[ $GRPC == 1 ]]; then
    echo
    echo "gRPC unary calls ($N per scenario, one HTTP/2 connection, one call in flight):"
    echo
    echo "| scenario | instructions/call | vs grpc_anonymous | vs grpc_bare_pingora |"
    echo "|---|---|---|---|"
    for s in grpc_bare_pingora grpc_anonymous grpc_authenticated grpc_noauthz; do
        awk -v s="$s" -v v="${IR[$s]}" -v a="${IR[grpc_anonymous]}" -v b="${IR[grpc_bare_pingora]}" 'BEGIN { printf "| %s | %d | %+d (%.2f×) | %.2f× |\n", s, v, v - a, v / a, v / b }'
    done
fi
