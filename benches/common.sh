# Shared by the benchmark scripts (sourced, not run).

# The gateway configuration both benchmarks measure: an anonymous route and an app-role route
# to the same upstream, the AAD emulator as the key source.
# usage: bench_gateway_config FILE GATEWAY_PORT ADMIN_PORT EMULATOR_PORT UPSTREAM_PORT WORKERS UPGRADE_SOCK
# Uses TID (tenant) and AUD (audience) from the caller.
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
