# Shared by the benchmark scripts (sourced, not run).

TID=11111111-1111-4111-8111-111111111111   # tenant of the benchmark tokens
AUD=api://bench                            # their audience
PIDS=()                                    # processes stopped on exit

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Stops what was started, removes the work folder (unless KEEP=1), keeps the exit status.
bench_cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}

# usage: bench_start TAG — log prefix, a new work folder in WORK, cleanup on exit
bench_start() {
    BENCH_TAG=$1
    WORK=$(mktemp -d "/tmp/aadgate-$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# A loopback port free right now (the kernel's choice, so two calls do not collide).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The gateway configuration both benchmarks measure: an anonymous route and an app-role route
# to the same upstream, the AAD emulator as the key source.
# usage: bench_gateway_config FILE GATEWAY_PORT ADMIN_PORT EMULATOR_PORT UPSTREAM_PORT WORKERS UPGRADE_SOCK
bench_gateway_config() {
    cat >"$1" <<EOF
[server]
listen = ["127.0.0.1:$2"]
admin_listen = "127.0.0.1:$3"
workers = $6
shutdown_grace = "1s"
upgrade_sock = "$7"

[identity]
metadata_url = "http://127.0.0.1:$4/common/v2.0/.well-known/openid-configuration"
audiences = ["$AUD"]
min_refetch_interval = "30s"
token_cache_size = 100000

[tenants]
mode = "allow_list"
allow = ["$TID"]
issuers = ["https://sts.windows.net/{tenantid}/", "https://login.microsoftonline.com/{tenantid}/v2.0"]

[[routes]]
name = "anon"
path_prefix = "/anon/"
upstream = "http://127.0.0.1:$5"
auth = "anonymous"

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "http://127.0.0.1:$5"
roles_any = ["Bench.Read"]
EOF
}

# Turns on `h2c` in the gateway configuration FILE and adds the gRPC routes to the echo service
# on ECHO_PORT: `grpc` (`/aadgate.echo.v1.Echo/`, app role Bench.Read), `grpc-anon`
# (`/anon-grpc/`, anonymous, the prefix stripped) and `grpc-noauthz` (`/noauthz-grpc/`, as `grpc`
# with `pass_authorization = false`, the prefix stripped).
# usage: bench_grpc_routes FILE ECHO_PORT
bench_grpc_routes() {
    sed -i '/^\[server\]$/a h2c = true' "$1"
    cat >>"$1" <<EOF

[[routes]]
name = "grpc"
path_prefix = "/aadgate.echo.v1.Echo/"
upstream = "h2c://127.0.0.1:$2"
roles_any = ["Bench.Read"]

[[routes]]
name = "grpc-anon"
path_prefix = "/anon-grpc/"
strip_prefix = "/anon-grpc"
upstream = "h2c://127.0.0.1:$2"
auth = "anonymous"

[[routes]]
name = "grpc-noauthz"
path_prefix = "/noauthz-grpc/"
strip_prefix = "/noauthz-grpc"
upstream = "h2c://127.0.0.1:$2"
roles_any = ["Bench.Read"]
pass_authorization = false
EOF
}

# Waits (at most 30 s) until something listens on loopback port $1; $2 names it for the error.
wait_port() { # port what
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not start on port $1"
}

# Waits (at most 2 min) until URL $1 answers 2xx; $2 names it for the error.
wait_http() { # url what
    local i
    for ((i = 0; i < 600; i++)); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    die "$2 did not answer at $1"
}
