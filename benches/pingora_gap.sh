#!/usr/bin/env bash
# Pingora's gap to nginx, per request: instructions (valgrind callgrind) and system calls
# (strace -c -f) of nginx pass-through and of the smallest pingora proxy, with each option
# pingora offers without changing pingora (see BENCHMARKS.md, "Pingora's gap to nginx").
#
# Starts on 127.0.0.1, on ports chosen at run time: the fast upstream (examples/bench_support.rs,
# one thread), then one server at a time: nginx (one process, `master_process off`, access log
# off, keepalive 64 to the upstream) and the pingora variants. Each server gets N GET requests on
# one keep-alive connection (curl) twice: once under callgrind (instructions), once under strace
# attached after the warm-up (system calls). Prints one table row per server.
#
# The pingora variants are built from a small cargo project this script writes to $WORK
# (pingora with the gateway's version and features, from the gateway's Cargo.lock, profile
# dist): `bare_glibc` is the smallest pingora proxy on glibc malloc with pingora's default
# downstream modules, every knob behind a flag (row bare_pingora: no flag, the reference),
# `bare_mimalloc` the same with mimalloc as the global allocator. Row "example" is
# examples/bare_pingora.rs, the ceiling the other benchmarks use (mimalloc, no downstream
# modules, as the gateway).
#
# Environment: N=2000 requests per measurement; VARIANTS (space-separated names of the rows
# below, default: all); VARIANT_DIR (a target dir holding bare_glibc and bare_mimalloc already
# built: skips the cargo build); KEEP=0 (1: keep callgrind and strace files for
# callgrind_annotate); SUPPORT and EXAMPLE_BIN (bench_support and examples/bare_pingora binaries,
# default target/dist/examples). Note: ROW max_retries
# is 1, not 0: with `max_retries = 0` pingora never tries the upstream (every request fails).
set -euo pipefail

N=${N:-2000}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
bench_start pgap

for tool in valgrind strace curl nginx callgrind_control; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
SUPPORT=${SUPPORT:-$TARGET_DIR/dist/examples/bench_support}
if [[ ! -x $SUPPORT ]]; then
    log "building bench_support (profile dist)"
    (cd "$ROOT" && cargo build --profile dist --quiet --example bench_support) || die "build failed"
fi

# ---------------------------------------------------------------- the pingora variants
if [[ -z ${VARIANT_DIR:-} ]]; then
    VARIANT_DIR=$WORK/target
    P=$WORK/proj
    mkdir -p "$P/src/bin"
    cp "$ROOT/Cargo.lock" "$P/Cargo.lock"
    PV=$(awk '/^name = "pingora"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/Cargo.lock")
    MV=$(awk '/^name = "mimalloc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/Cargo.lock")
    cat >"$P/Cargo.toml" <<TOML
[package]
name = "pingora_gap"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
pingora = { version = "=$PV", features = ["proxy", "rustls"] }
async-trait = "0.1"
mimalloc = { version = "=$MV", default-features = false }

[profile.release]
debug = "line-tables-only"

[profile.dist]
inherits = "release"
lto = "thin"
codegen-units = 1
TOML
    cat >"$P/src/variant.rs" <<'RUST'
// Bare pingora (a ProxyHttp with only upstream_peer), with every knob pingora exposes behind a
// flag. Defaults reproduce examples/bare_pingora.rs exactly.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::TcpKeepalive;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};

#[derive(Default, Clone)]
struct Knobs {
    no_modules: bool,
    ds_read_timeout: Option<Option<Duration>>, // Some(None): no timeout
    ds_write_timeout: Option<Option<Duration>>,
    ds_keepalive: Option<Option<u64>>,
    proxy_tasks: Option<bool>,
    peer_idle_timeout: Option<Duration>,
    peer_read_timeout: Option<Duration>,
    peer_write_timeout: Option<Duration>,
    peer_tcp_keepalive: bool,
    peer_recv_buf: Option<usize>,
}

struct Bare {
    upstream: SocketAddr,
    k: Knobs,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        if !self.k.no_modules {
            // the default: a disabled response compression module
            modules.add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        if let Some(t) = self.k.ds_read_timeout {
            session.set_read_timeout(t);
        }
        if let Some(t) = self.k.ds_write_timeout {
            session.set_write_timeout(t);
        }
        if let Some(k) = self.k.ds_keepalive {
            session.set_keepalive(k);
        }
        if let Some(p) = self.k.proxy_tasks {
            session.set_proxy_tasks_enabled(p);
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        let o = &mut peer.options;
        if self.k.peer_idle_timeout.is_some() {
            o.idle_timeout = self.k.peer_idle_timeout;
        }
        if self.k.peer_read_timeout.is_some() {
            o.read_timeout = self.k.peer_read_timeout;
        }
        if self.k.peer_write_timeout.is_some() {
            o.write_timeout = self.k.peer_write_timeout;
        }
        if self.k.peer_tcp_keepalive {
            o.tcp_keepalive = Some(TcpKeepalive {
                idle: Duration::from_secs(60),
                interval: Duration::from_secs(5),
                count: 5,
                #[cfg(target_os = "linux")]
                user_timeout: Duration::from_secs(0),
            });
        }
        if self.k.peer_recv_buf.is_some() {
            o.tcp_recv_buf = self.k.peer_recv_buf;
        }
        Ok(Box::new(peer))
    }
}

fn secs_opt(v: &str) -> Option<Duration> {
    if v == "none" { None } else { Some(Duration::from_secs(v.parse().expect("seconds or none"))) }
}

pub fn main_with(alloc: &str) -> ExitCode {
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut k = Knobs::default();
    let mut server_options: Option<HttpServerOptions> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(v.parse().unwrap()),
            "--upstream" => upstream = Some(v.parse().unwrap()),
            "--workers" | "--threads" => conf.threads = v.parse().unwrap(),
            "--work-stealing" => conf.work_stealing = v == "1",
            "--pool-size" => conf.upstream_keepalive_pool_size = v.parse().unwrap(),
            "--max-retries" => conf.max_retries = v.parse().unwrap(),
            "--listener-tasks" => conf.listener_tasks_per_fd = v.parse().unwrap(),
            "--fast-timeout-threshold" => conf.fast_timeout_to_tokio_threshold_seconds = if v == "none" { None } else { Some(v.parse().unwrap()) },
            "--keepalive-limit" => {
                server_options.get_or_insert_with(HttpServerOptions::default).keepalive_request_limit = Some(v.parse().unwrap())
            }
            "--server-options" => {
                server_options.get_or_insert_with(HttpServerOptions::default);
            }
            "--no-modules" => k.no_modules = v == "1",
            "--ds-read-timeout" => k.ds_read_timeout = Some(secs_opt(&v)),
            "--ds-write-timeout" => k.ds_write_timeout = Some(secs_opt(&v)),
            "--ds-keepalive" => k.ds_keepalive = Some(if v == "none" { None } else { Some(v.parse().unwrap()) }),
            "--proxy-tasks" => k.proxy_tasks = Some(v == "1"),
            "--peer-idle-timeout" => k.peer_idle_timeout = secs_opt(&v),
            "--peer-read-timeout" => k.peer_read_timeout = secs_opt(&v),
            "--peer-write-timeout" => k.peer_write_timeout = secs_opt(&v),
            "--peer-tcp-keepalive" => k.peer_tcp_keepalive = v == "1",
            "--peer-recv-buf" => k.peer_recv_buf = Some(v.parse().unwrap()),
            other => {
                eprintln!("unknown flag {other}");
                return ExitCode::from(2);
            }
        }
    }
    eprintln!("bare variant ({alloc}) threads={} work_stealing={}", conf.threads, conf.work_stealing);
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare { upstream: upstream.expect("--upstream"), k },
    );
    if server_options.is_some() {
        service.app_logic_mut().unwrap().server_options = server_options;
    }
    service.add_tcp(&listen.expect("--listen").to_string());
    server.add_service(service);
    server.run_forever()
}
RUST
    printf '#[path = "../variant.rs"]\nmod variant;\nfn main() -> std::process::ExitCode { variant::main_with("glibc") }\n' >"$P/src/bin/bare_glibc.rs"
    printf '#[global_allocator]\nstatic GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;\n#[path = "../variant.rs"]\nmod variant;\nfn main() -> std::process::ExitCode { variant::main_with("mimalloc") }\n' >"$P/src/bin/bare_mimalloc.rs"
    log "building the pingora variants (pingora $PV, profile dist; a few minutes)"
    (cd "$P" && CARGO_TARGET_DIR=$VARIANT_DIR cargo build --profile dist --quiet --bins) || die "variant build failed"
fi
GLIBC=$VARIANT_DIR/dist/bare_glibc
MIMALLOC=$VARIANT_DIR/dist/bare_mimalloc

# ---------------------------------------------------------------- rows: name, binary, flags
# Row "nginx" is nginx; every other row is a pingora variant: binary then flags.
declare -A ROW
ROW[example]="${EXAMPLE_BIN:-$TARGET_DIR/dist/examples/bare_pingora}"
ROW[bare_pingora]="$GLIBC"
ROW[no_work_stealing]="$GLIBC --work-stealing 0"
ROW[pool_size_1]="$GLIBC --pool-size 1"
ROW[max_retries_1]="$GLIBC --max-retries 1"
ROW[server_options]="$GLIBC --server-options 1"
ROW[no_compression_module]="$GLIBC --no-modules 1"
ROW[ds_read_timeout_none]="$GLIBC --ds-read-timeout none"
ROW[ds_keepalive_60]="$GLIBC --ds-keepalive 60"
ROW[proxy_tasks_on]="$GLIBC --proxy-tasks 1"
ROW[peer_idle_timeout_60]="$GLIBC --peer-idle-timeout 60"
ROW[peer_tcp_keepalive]="$GLIBC --peer-tcp-keepalive 1"
ROW[peer_recv_buf_64k]="$GLIBC --peer-recv-buf 65536"
ROW[mimalloc]="$MIMALLOC"
ROW[mimalloc_all]="$MIMALLOC --work-stealing 0 --no-modules 1 --ds-read-timeout none"
ORDER=(nginx example bare_pingora no_work_stealing pool_size_1 max_retries_1 server_options no_compression_module
    ds_read_timeout_none ds_keepalive_60 proxy_tasks_on peer_idle_timeout_60 peer_tcp_keepalive
    peer_recv_buf_64k mimalloc mimalloc_all)
read -r -a SELECTED <<<"${VARIANTS:-${ORDER[*]}}"

# ---------------------------------------------------------------- helpers

UP=$(free_port)
"$SUPPORT" upstream --listen "127.0.0.1:$UP" --threads 1 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP/x" upstream

nginx_conf() { # port -> config file
    local d=$WORK/nginx-$1
    mkdir -p "$d/logs" "$d/tmp"
    cat >"$d/nginx.conf" <<NGX
worker_processes 1;
master_process off;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGX
    echo "$d"
}

# usage: start_server ROW PORT [wrapper...] — sets SPID
start_server() {
    local row=$1 port=$2
    shift 2
    if [[ $row == nginx ]]; then
        local d
        d=$(nginx_conf "$port")
        "$@" nginx -p "$d" -c "$d/nginx.conf" >"$WORK/$row.out" 2>&1 &
    else
        # shellcheck disable=SC2086
        "$@" ${ROW[$row]} --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP" >"$WORK/$row.out" 2>&1 &
    fi
    SPID=$!
    PIDS+=("$SPID")
}
stop_server() { # [signal]; a server still running 3 s later gets SIGKILL
    local i
    kill "-${1:-INT}" "$SPID" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    # The shell reports a job it killed ("Killed") on its own stderr: silence that too.
    { kill -KILL "$SPID" || true; wait "$SPID" || true; } 2>/dev/null
}

transfers() { # port -> curl config: N transfers on one connection
    local i
    for ((i = 0; i < N; i++)); do
        ((i > 0)) && printf 'next\n'
        printf 'url = "http://127.0.0.1:%s/x"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' "$1"
    done
}

check_status() { # file
    local bad
    bad=$(grep -cv '^200$' "$1" || true)
    [[ $bad == 0 && $(wc -l <"$1") == "$N" ]] || die "unexpected statuses in $1: $(sort "$1" | uniq -c | tr '\n' ' ')"
}

declare -A IR SYS TOP
measure() { # row
    local row=$1 port f i total
    # instructions
    port=$(free_port)
    start_server "$row" "$port" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$row.%p"
    wait_http "http://127.0.0.1:$port/x" "$row"
    for _ in 1 2 3; do curl -fsS -o /dev/null "http://127.0.0.1:$port/x"; done
    transfers "$port" >"$WORK/run.curl"
    callgrind_control -z "$SPID" >/dev/null 2>&1
    curl -sS -K "$WORK/run.curl" >"$WORK/$row.status"
    callgrind_control -d "$row" "$SPID" >/dev/null 2>&1
    f=""
    for ((i = 0; i < 300; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/x" || true
        f=$(grep -lx "desc: Trigger: dump $row" "$WORK"/callgrind."$row".* 2>/dev/null | head -n 1 || true)
        [[ -n $f ]] && break
        sleep 0.2
    done
    [[ -n $f ]] || die "no callgrind dump for $row"
    check_status "$WORK/$row.status"
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
    IR[$row]=$((total / N))
    stop_server KILL
    # system calls: strace attached (all threads) after the warm-up
    port=$(free_port)
    start_server "$row" "$port"
    wait_http "http://127.0.0.1:$port/x" "$row"
    for _ in 1 2 3; do curl -fsS -o /dev/null "http://127.0.0.1:$port/x"; done
    transfers "$port" >"$WORK/run.curl"
    strace -f -c -p "$SPID" -o "$WORK/strace.$row.txt" 2>/dev/null &
    local st=$!
    sleep 1
    curl -sS -K "$WORK/run.curl" >"$WORK/$row.status"
    sleep 0.5
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    check_status "$WORK/$row.status"
    stop_server
    SYS[$row]=$(awk -v n="$N" '$NF == "total" { printf "%.2f", $4 / n }' "$WORK/strace.$row.txt")
    # the system calls made at least once per ten requests, per request
    TOP[$row]=$(awk -v n="$N" 'NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" { c = $4; if (c / n >= 0.1) printf "%s%s %.2f", sep, $NF, c / n; sep = ", " }' "$WORK/strace.$row.txt")
    log "$(printf '%-24s %8d instructions/request  %6s syscalls/request  (%s)' "$row" "${IR[$row]}" "${SYS[$row]}" "${TOP[$row]}")"
}

for row in "${SELECTED[@]}"; do
    [[ $row == nginx || -n ${ROW[$row]:-} ]] || die "unknown variant $row"
    measure "$row"
done

echo
echo "Pingora's gap to nginx, per request — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $N GET requests on one keep-alive connection, one worker"
echo
echo "| server | instructions/request | vs bare pingora | syscalls/request | system calls per request (≥ 0.1) |"
echo "|---|---:|---:|---:|---|"
B=${IR[bare_pingora]:-0}
for row in "${SELECTED[@]}"; do
    awk -v r="$row" -v v="${IR[$row]}" -v b="$B" -v s="${SYS[$row]}" -v t="${TOP[$row]}" \
        'BEGIN { printf "| %s | %d | %s | %s | %s |\n", r, v, (b > 0 ? sprintf("%.3f×", v / b) : "-"), s, t }'
done
exit 0
