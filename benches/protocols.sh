#!/usr/bin/env bash
# gRPC and HTTP/2 through the gateway (SPEC section 13; BENCHMARKS.md, "Protocols").
#
# Starts on 127.0.0.1, on ports chosen at run time: a gRPC echo service over h2c
# (`bench_support grpc-upstream`: `aadgate.echo.v1.Echo/Unary`, records nothing), the fast HTTP/1.1
# upstream (`bench_support upstream`), the AAD emulator (`aadgate dev-idp`), one gateway with
# `h2c = true`, one worker and the access log on as users run it, and, when nginx is installed,
# nginx passing HTTP/2 (cleartext, prior knowledge) through to the HTTP upstream as a ceiling,
# and the smallest pingora proxy (`examples/bare_pingora.rs --h2c true`: h2c in, h2c out, nothing
# else) in front of the echo: the ceiling of any gRPC proxy built on pingora.
# The gateway's routes: `grpc` (`/aadgate.echo.v1.Echo/` to the echo over h2c, app role
# Bench.Read), `grpc-anon` (`/anon-grpc/`, the same service without authentication, the prefix
# stripped), `grpc-noauthz` (`/noauthz-grpc/`, as `grpc` with `pass_authorization = false`, the
# prefix stripped) and the `anon` and `api` HTTP routes of the other benchmarks.
#
# Each round runs, back to back, for DURATION seconds each:
#   grpc_direct      Unary calls straight to the echo, GRPC_CONNS connections x GRPC_STREAMS calls
#                    in flight (`bench_support grpc-load`, the token sent as on the gateway)
#   grpc_aadgate     the same calls through the gateway with the token (route `grpc`)
#   grpc_anonymous   the same calls through the gateway's anonymous route (same token header):
#                    what proxying costs without authentication
#   grpc_noauthz     the same calls, authenticated, the token not forwarded to the service
#   grpc_bare_pingora  the same calls through the bare pingora proxy (token forwarded)
#   grpc_direct_1x1, grpc_aadgate_1x1   one call in flight, for the latency a call gains
#   h2_aadgate       h2load over h2c, H2_CONNS connections x H2_STREAMS streams, GET /api/x with
#                    the token
#   h1_aadgate       h2load --h1, H2_CONNS connections, one request in flight on each
#   h2_nginx         h2load over h2c against nginx (no authentication), as h2_aadgate
# Ratios are taken within a round; the table shows the median of the rounds. The gateway and
# nginx run alone on SUT_CPU (taskset); the load clients, the echo, the upstream and the
# emulator share LOAD_CPU. So a direct call has one CPU for the client and the service, a call
# through the gateway has a second CPU for the gateway.
#
# Before measuring it checks that a gRPC call with the token passes the gateway, that one
# without is refused as UNAUTHENTICATED, and that HTTP/2 and HTTP/1.1 requests get 200; every
# run must end without an error. Exits 1 when authenticated gRPC through the gateway does less
# than TARGET (0.7) x direct, 2 when the setup or a run fails.
#
# Environment: DURATION=8 ROUNDS=3 GRPC_CONNS=4 GRPC_STREAMS=16 H2_CONNS=32 H2_STREAMS=10
#              TARGET=0.7 SUT_CPU=0 LOAD_CPU=1 BUILD=1 (0: reuse target/dist) KEEP=0
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
GRPC_CONNS=${GRPC_CONNS:-4}
GRPC_STREAMS=${GRPC_STREAMS:-16}
H2_CONNS=${H2_CONNS:-32}
H2_STREAMS=${H2_STREAMS:-10}
TARGET=${TARGET:-0.7}
SUT_CPU=${SUT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
bench_start protocols

for tool in taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install util-linux curl python3)"
done
command -v h2load >/dev/null || die "h2load is needed (apt-get install nghttp2-client)"
HAVE_NGINX=0
command -v nginx >/dev/null && HAVE_NGINX=1
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ ${BUILD:-1} == 1 ]]; then
    log "building (profile dist)"
    (cd "$ROOT" && cargo build -q --profile dist --bin aadgate --example bench_support --example bare_pingora) || die "build failed"
fi
GW_BIN=$TARGET_DIR/dist/aadgate
SUPPORT=$TARGET_DIR/dist/examples/bench_support
BARE_BIN=$TARGET_DIR/dist/examples/bare_pingora
[[ -x $GW_BIN && -x $SUPPORT && -x $BARE_BIN ]] || die "no $GW_BIN, $SUPPORT or $BARE_BIN (run with BUILD=1)"
SUT=(taskset -c "$SUT_CPU")
LOAD=(taskset -c "$LOAD_CPU")


# ---------------------------------------------------------------- processes
ECHO=$(free_port); UP=$(free_port); IDP=$(free_port); GW=$(free_port); ADMIN=$(free_port); BARE=$(free_port)
"${LOAD[@]}" "$SUPPORT" grpc-upstream --listen "127.0.0.1:$ECHO" 2>"$WORK/grpc-echo.log" &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
"${LOAD[@]}" "$SUPPORT" upstream --listen "127.0.0.1:$UP" --threads 1 2>"$WORK/upstream.log" &
UP_PID=$!
PIDS+=("$UP_PID")
KEY=$WORK/bench-key.pem
TOKEN_FILE=$WORK/token.txt
"${LOAD[@]}" "$SUPPORT" mint --key "$KEY" --count 1 --out "$TOKEN_FILE" --tid "$TID" --aud "$AUD" --roles Bench.Read 2>/dev/null ||
    die "cannot mint a token"
"${LOAD[@]}" "$GW_BIN" dev-idp --listen "127.0.0.1:$IDP" --key "$KEY" >"$WORK/idp.log" 2>&1 &
PIDS+=($!)
wait_port "$ECHO" "gRPC echo"
wait_port "$UP" upstream
wait_port "$IDP" emulator
TOKEN=$(head -n 1 "$TOKEN_FILE")

bench_gateway_config "$WORK/aadgate.toml" "$GW" "$ADMIN" "$IDP" "$UP" 1 "$WORK/upgrade.sock"
bench_grpc_routes "$WORK/aadgate.toml" "$ECHO"
env -u RUST_LOG "${SUT[@]}" "$GW_BIN" run -c "$WORK/aadgate.toml" >/dev/null 2>"$WORK/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$GW" gateway
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || die "gateway not ready (see $WORK/gateway.log)"
"${SUT[@]}" "$BARE_BIN" --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$ECHO" --h2c true >/dev/null 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_port "$BARE" "bare pingora"

NGINX_PID=""
if [[ $HAVE_NGINX == 1 ]]; then
    NG=$(free_port)
    mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$NG http2;
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
else
    log "nginx is not installed: no HTTP/2 ceiling (apt-get install nginx)"
fi

# ---------------------------------------------------------------- measuring
TICK=$(getconf CLK_TCK)
# CPU time (user + system, clock ticks) of a set of processes.
ticks() {
    local p
    for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0; done | awk '{ s += $1 } END { print s + 0 }'
}
# Busy and total ticks of one CPU (busy: user, nice, system, irq, softirq, steal).
cpu_stat() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# Other work on the machine: CPU ticks of every process outside this script's process group
# (with the children they reaped) plus the time the hypervisor took (steal), and the ticks of
# all CPUs together.
OUR_PGID=$(awk '{ sub(/^.*\) /, ""); print $3 }' "/proc/$$/stat")
other_stat() {
    local steal_all
    steal_all=$(awk '$1 == "cpu" { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$OUR_PGID" -v steal="${steal_all% *}" -v all="${steal_all#* }" '
        { sub(/^.*\) /, ""); if ($3 != g) s += $12 + $13 + $14 + $15 } END { print s + steal, all }'
}

GRPC_DIRECT=http://127.0.0.1:$ECHO
GRPC_AADGATE=http://127.0.0.1:$GW
GRPC_ANON=http://127.0.0.1:$GW/anon-grpc
GRPC_NOAUTHZ=http://127.0.0.1:$GW/noauthz-grpc
GRPC_BARE=http://127.0.0.1:$BARE
# usage: grpc_run URL CONNS STREAMS SECONDS — prints `calls/s p50_us p99_us errors`
grpc_run() {
    local out
    if ! out=$("${LOAD[@]}" "$SUPPORT" grpc-load --url "$1" --token-file "$TOKEN_FILE" --connections "$2" \
        --concurrency "$3" --duration "$4" 2>"$WORK/grpc-load.err"); then
        die "gRPC load against $1 failed: $out $(cat "$WORK/grpc-load.err")"
    fi
    echo "$out"
}
# usage: h2load_run NAME URL SECONDS h2load-args... — prints `req/s p50_us p99_us errors`
h2load_run() {
    local name=$1 url=$2 secs=$3 out
    shift 3
    rm -f "$WORK/h2load-$name.log"
    out=$("${LOAD[@]}" h2load -t 1 -D "$secs" --log-file="$WORK/h2load-$name.log" \
        -H "authorization: Bearer $TOKEN" "$@" "$url" 2>&1) || die "h2load $name failed: $out"
    echo "$out" >"$WORK/h2load-$name.txt"
    python3 - "$WORK/h2load-$name.txt" "$WORK/h2load-$name.log" <<'EOF' || die "h2load $name: $(cat "$WORK/h2load-$name.txt")"
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text).group(1))
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
done, succeeded, errored, timeout = int(req.group(3)), int(req.group(4)), int(req.group(6)), int(req.group(7))
non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
# Requests still in flight when the duration ends are counted as failed, never done: only
# the finished ones that did not succeed, and errors or timeouts, are errors.
errors = (done - succeeded) + errored + timeout + non2xx
latencies = sorted(int(line.split("\t")[2]) for line in open(sys.argv[2]) if line.strip())
def pct(p):
    return latencies[max(1, -(-len(latencies) * p // 100)) - 1] if latencies else 0
print(f"{rps:.1f} {pct(50)} {pct(99)} {errors}")
EOF
}

declare -A ALL_RPS ALL_P50 ALL_P99 ALL_GW ALL_UPC ALL_OTHER ALL_SUTB ALL_LOADB
LAST=""
# usage: measure SCENARIO KIND ARGS... — KIND grpc (URL CONNS STREAMS) or h2load (NAME URL ARGS...);
# records calls/s, p50, p99, CPU microseconds per call of the server under test (gateway or
# nginx) and of the upstream (echo or HTTP upstream), and how busy each CPU was.
measure() {
    local scenario=$1 kind=$2 srv=() upstream s0 s1 u0 u1 sut0 sut1 load0 load1 o0 o1 rps p50 p99 errors
    shift 2
    case $scenario in
        grpc_direct*) srv=() ;;
        h2_nginx) mapfile -t srv < <(echo "$NGINX_PID"; pgrep -P "$NGINX_PID" || true) ;;
        grpc_bare_pingora) srv=("$BARE_PID") ;;
        *) srv=("$GW_PID") ;;
    esac
    upstream=$ECHO_PID
    [[ $scenario == h* ]] && upstream=$UP_PID
    s0=$(ticks "${srv[@]}"); u0=$(ticks "$upstream")
    read -r sut0 sutt0 <<<"$(cpu_stat "$SUT_CPU")"; read -r load0 loadt0 <<<"$(cpu_stat "$LOAD_CPU")"
    read -r o0 ot0 <<<"$(other_stat)"
    if [[ $kind == grpc ]]; then
        LAST=$(grpc_run "$1" "$2" "$3" "$DURATION")
    else
        LAST=$(h2load_run "$@")
    fi
    s1=$(ticks "${srv[@]}"); u1=$(ticks "$upstream")
    read -r sut1 sutt1 <<<"$(cpu_stat "$SUT_CPU")"; read -r load1 loadt1 <<<"$(cpu_stat "$LOAD_CPU")"
    read -r o1 ot1 <<<"$(other_stat)"
    read -r rps p50 p99 errors <<<"$LAST"
    [[ $errors == 0 ]] || die "$scenario: $errors errors during the run"
    ALL_RPS[$scenario]+="$rps "
    ALL_P50[$scenario]+="$p50 "
    ALL_P99[$scenario]+="$p99 "
    local calls
    calls=$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { print r * d }')
    if ((${#srv[@]})); then
        ALL_GW[$scenario]+="$(awk -v t=$((s1 - s0)) -v k="$TICK" -v n="$calls" 'BEGIN { printf "%.1f", (n > 0 ? t / k * 1e6 / n : 0) }') "
    fi
    ALL_UPC[$scenario]+="$(awk -v t=$((u1 - u0)) -v k="$TICK" -v n="$calls" 'BEGIN { printf "%.1f", (n > 0 ? t / k * 1e6 / n : 0) }') "
    ALL_OTHER[$scenario]+="$(awk -v o=$((o1 - o0)) -v t=$((ot1 - ot0)) 'BEGIN { printf "%.0f", (t > 0 ? 100 * o / t : 0) }') "
    ALL_SUTB[$scenario]+="$(awk -v b=$((sut1 - sut0)) -v t=$((sutt1 - sutt0)) 'BEGIN { printf "%.0f", (t > 0 ? 100 * b / t : 0) }') "
    ALL_LOADB[$scenario]+="$(awk -v b=$((load1 - load0)) -v t=$((loadt1 - loadt0)) 'BEGIN { printf "%.0f", (t > 0 ? 100 * b / t : 0) }') "
    log "$(printf '%-18s %10s calls/s  p50 %6s us  p99 %6s us' "$scenario" "$rps" "$p50" "$p99")"
}

# ---------------------------------------------------------------- checks
log "checks"
check_out=$(grpc_run "$GRPC_AADGATE" 1 1 0.3)
[[ ${check_out%% *} != 0.0 ]] || die "no gRPC call through the gateway completed"
if "${LOAD[@]}" "$SUPPORT" grpc-load --url "$GRPC_AADGATE" --connections 1 --concurrency 1 --duration 0.2 >/dev/null 2>"$WORK/noauth.err"; then
    die "a gRPC call without a token passed the gateway"
fi
grep -q UNAUTHENTICATED "$WORK/noauth.err" || die "a gRPC call without a token: $(cat "$WORK/noauth.err")"
grpc_run "$GRPC_ANON" 1 1 0.3 >/dev/null
grpc_run "$GRPC_NOAUTHZ" 1 1 0.3 >/dev/null
grpc_run "$GRPC_BARE" 1 1 0.3 >/dev/null
grpc_run "$GRPC_DIRECT" 1 1 0.3 >/dev/null
h2_check() { # name URL protocol h2load-args...
    local out
    out=$("${LOAD[@]}" h2load -n 1 -c 1 -H "authorization: Bearer $TOKEN" "${@:4}" "$2" 2>&1) || die "h2load $1: $out"
    grep -q "status codes: 1 2xx" <<<"$out" || die "$1 did not answer 200: $out"
    grep -q "Application protocol: $3\$" <<<"$out" || die "$1 did not speak $3: $out"
}
h2_check "aadgate over h2c" "http://127.0.0.1:$GW/api/x" h2c
h2_check "aadgate over HTTP/1.1" "http://127.0.0.1:$GW/api/x" http/1.1 --h1
out=$("${LOAD[@]}" h2load -n 1 -c 1 "http://127.0.0.1:$GW/api/x" 2>&1) || true
grep -q "status codes: 0 2xx, 0 3xx, 1 4xx" <<<"$out" || die "the api route answered a request without a token: $out"
[[ -z $NGINX_PID ]] || h2_check "nginx over h2c" "http://127.0.0.1:$NG/x" h2c

H2_ARGS=(-c "$H2_CONNS" -m "$H2_STREAMS")
H1_ARGS=(--h1 -c "$H2_CONNS" -m 1)
one_round() { # seconds
    local d=$1
    DURATION=$d measure grpc_direct grpc "$GRPC_DIRECT" "$GRPC_CONNS" "$GRPC_STREAMS"
    DURATION=$d measure grpc_aadgate grpc "$GRPC_AADGATE" "$GRPC_CONNS" "$GRPC_STREAMS"
    DURATION=$d measure grpc_anonymous grpc "$GRPC_ANON" "$GRPC_CONNS" "$GRPC_STREAMS"
    DURATION=$d measure grpc_noauthz grpc "$GRPC_NOAUTHZ" "$GRPC_CONNS" "$GRPC_STREAMS"
    DURATION=$d measure grpc_bare_pingora grpc "$GRPC_BARE" "$GRPC_CONNS" "$GRPC_STREAMS"
    DURATION=$d measure grpc_direct_1x1 grpc "$GRPC_DIRECT" 1 1
    DURATION=$d measure grpc_aadgate_1x1 grpc "$GRPC_AADGATE" 1 1
    DURATION=$d measure h2_aadgate h2load h2-aadgate "http://127.0.0.1:$GW/api/x" "$d" "${H2_ARGS[@]}"
    DURATION=$d measure h1_aadgate h2load h1-aadgate "http://127.0.0.1:$GW/api/x" "$d" "${H1_ARGS[@]}"
    [[ -z $NGINX_PID ]] || DURATION=$d measure h2_nginx h2load h2-nginx "http://127.0.0.1:$NG/x" "$d" "${H2_ARGS[@]}"
}

log "warm-up"
one_round 2
for s in "${!ALL_RPS[@]}"; do
    ALL_RPS[$s]=""; ALL_P50[$s]=""; ALL_P99[$s]=""; ALL_GW[$s]=""; ALL_UPC[$s]=""; ALL_OTHER[$s]=""; ALL_SUTB[$s]=""; ALL_LOADB[$s]=""
done
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS"
    one_round "$DURATION"
done

# ---------------------------------------------------------------- table
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# Median over the rounds of a over b (OP "/") or a minus b (OP "-"): per_round ARRAY a b OP
per_round() {
    local -n arr=$1
    paste -d' ' <(tr ' ' '\n' <<<"${arr[$2]:-}" | grep -v '^$') <(tr ' ' '\n' <<<"${arr[$3]:-}" | grep -v '^$') |
        awk -v op="$4" 'NF == 2 { if (op == "-") printf "%.0f\n", $1 - $2; else printf "%.3f\n", $1 / $2 }' | median
}
MACHINE="$(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores"
echo
echo "aadgate protocols benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $MACHINE — commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "$ROUNDS rounds of ${DURATION}s per scenario; gateway (1 worker, h2c, access log on) and nginx on CPU $SUT_CPU; load clients, gRPC echo, HTTP upstream, emulator on CPU $LOAD_CPU"
echo
printf '| %-18s | %-20s | %9s | %-26s | %7s | %7s | %9s | %12s | %6s | %6s | %-12s |\n' scenario load "calls/s" "calls/s per round" "p50 us" "p99 us" "gw CPU us" "upstr CPU us" "CPU$SUT_CPU %" "CPU$LOAD_CPU %" "other load %"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------------------- ---------------------- ----------: ---------------------------- --------: --------: ----------: -------------: -------: -------: --------------
for s in grpc_direct grpc_aadgate grpc_anonymous grpc_noauthz grpc_bare_pingora grpc_direct_1x1 grpc_aadgate_1x1 h2_aadgate h1_aadgate h2_nginx; do
    [[ -n ${ALL_RPS[$s]:-} ]] || continue
    case $s in
        grpc_*1x1) load="gRPC 1 conn x 1" ;;
        grpc_*) load="gRPC $GRPC_CONNS conns x $GRPC_STREAMS" ;;
        h1_*) load="h2load --h1 -c $H2_CONNS" ;;
        *) load="h2load -c $H2_CONNS -m $H2_STREAMS" ;;
    esac
    printf '| %-18s | %-20s | %9.0f | %-26s | %7s | %7s | %9s | %12s | %6s | %6s | %-12s |\n' "$s" "$load" "$(median <<<"${ALL_RPS[$s]}")" \
        "$(tr ' ' '\n' <<<"${ALL_RPS[$s]}" | grep -v '^$' | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')" \
        "$(median <<<"${ALL_P50[$s]}")" "$(median <<<"${ALL_P99[$s]}")" "$(median <<<"${ALL_GW[$s]:-}")" \
        "$(median <<<"${ALL_UPC[$s]}")" "$(median <<<"${ALL_SUTB[$s]}")" "$(median <<<"${ALL_LOADB[$s]}")" \
        "$(tr ' ' '\n' <<<"${ALL_OTHER[$s]}" | grep -v '^$' | paste -sd/ -)"
done
echo
echo "gw CPU: CPU microseconds (user + system) per call of the gateway (of nginx on h2_nginx, of bare pingora on grpc_bare_pingora); upstr CPU: of the gRPC echo (grpc_*) or the HTTP upstream (h*_*); CPU N %: how busy each CPU was; other load %: CPU time of processes outside this benchmark and time taken by the hypervisor (steal), in % of both CPUs, per round (negative: a process outside ended during the run)."
# A negative figure: a process outside the benchmark ended during the run, its time unknown.
OTHER_MAX=$(printf '%s ' "${ALL_OTHER[@]}" | tr ' ' '\n' | grep -v '^$' | tr -d - | sort -n | tail -n 1)
if ((OTHER_MAX > 5)); then
    echo "Warning: other work on the machine during a run (other load up to $OTHER_MAX %, or a process that ended): those rounds are disturbed; rerun on a quiet machine."
fi
RATIO=$(per_round ALL_RPS grpc_aadgate grpc_direct /)
MET=$(awk -v r="$RATIO" -v t="$TARGET" 'BEGIN { print ((r >= t) ? "met" : "NOT MET") }')
echo
echo "| ratio (median of per-round ratios) | value |"
echo "|---|---|"
echo "| gRPC unary through aadgate / direct, $GRPC_CONNS x $GRPC_STREAMS (target >= $TARGET) | $RATIO ($MET) |"
echo "| gRPC through aadgate, authenticated / anonymous route | $(per_round ALL_RPS grpc_aadgate grpc_anonymous /) |"
echo "| gRPC through aadgate, token not forwarded / forwarded | $(per_round ALL_RPS grpc_noauthz grpc_aadgate /) |"
echo "| gRPC through bare pingora / direct (the ceiling on pingora) | $(per_round ALL_RPS grpc_bare_pingora grpc_direct /) |"
echo "| gRPC through aadgate / bare pingora | $(per_round ALL_RPS grpc_aadgate grpc_bare_pingora /) |"
echo "| gRPC 1 x 1 through aadgate / direct | $(per_round ALL_RPS grpc_aadgate_1x1 grpc_direct_1x1 /) |"
echo "| gRPC latency a call gains through aadgate, 1 x 1, p50 / p99 | +$(per_round ALL_P50 grpc_aadgate_1x1 grpc_direct_1x1 -) / +$(per_round ALL_P99 grpc_aadgate_1x1 grpc_direct_1x1 -) us |"
echo "| HTTP/2 / HTTP/1.1 through aadgate (req/s) | $(per_round ALL_RPS h2_aadgate h1_aadgate /) |"
if [[ -n $NGINX_PID ]]; then
    echo "| HTTP/2 through aadgate / nginx pass-through (req/s) | $(per_round ALL_RPS h2_aadgate h2_nginx /) |"
else
    echo "| HTTP/2 through aadgate / nginx pass-through | not measured: nginx is not installed |"
fi
[[ $MET == met ]] || exit 1
