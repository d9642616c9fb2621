#!/usr/bin/env bash
# Runs the proxy on this machine and fetches a page through it:
#
#   curl --socks5-hostname 127.0.0.1:LOCAL_PORT --> ss-local --> ss-server --> a loopback HTTP server
#
# Builds the release binaries, generates a key, writes a config, starts a tiny HTTP server (python3) with
# a page of its own, starts ss-server and ss-local, fetches the page with curl and prints it. Everything
# it started is stopped, and its temp directory removed, when it exits. Exits non-zero if the page does
# not come back.
#
#   scripts/demo.sh                  ss-local on 127.0.0.1:1080 (another free port if 1080 is taken)
#   LOCAL_PORT=1081 scripts/demo.sh  ss-local on 127.0.0.1:1081
#   METHOD=chacha20-ietf-poly1305 scripts/demo.sh   another method (default 2022-blake3-aes-256-gcm)
#
# Needs: the Rust toolchain, python3 and curl. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

METHOD="${METHOD:-2022-blake3-aes-256-gcm}"

say() { printf '== %s\n' "$*" >&2; }

for tool in cargo python3 curl; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is needed" >&2; exit 1; }
done

# A port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_in_use() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}
# Waits (up to 10 s) until 127.0.0.1:$2 accepts connections; fails early if process $3 died.
wait_for_port() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $name exited; its log:" >&2
            cat "$work/$name.log" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "demo: $name is not listening on 127.0.0.1:$port after 10 s; its log:" >&2
    cat "$work/$name.log" >&2
    return 1
}

if [ -n "${LOCAL_PORT:-}" ]; then
    local_port=$LOCAL_PORT
    if port_in_use "$local_port"; then
        echo "demo: 127.0.0.1:$local_port is in use; pick another LOCAL_PORT" >&2
        exit 1
    fi
else
    local_port=1080
    if port_in_use "$local_port"; then
        local_port=$(free_port)
        say "127.0.0.1:1080 is in use; ss-local takes 127.0.0.1:$local_port (set LOCAL_PORT to choose)"
    fi
fi
server_port=$(free_port)
http_port=$(free_port)

say "building the release binaries"
cargo build --release -p ss-server -p ss-local
bin=target/release

work=$(mktemp -d "${TMPDIR:-/tmp}/ss-demo.XXXXXX")
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "generating a $METHOD key"
if [[ $METHOD == 2022-* ]]; then
    password=$("$bin/ss-server" --generate-key -m "$METHOD")
else
    # Classic methods take a password; a long random one.
    password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
fi

cat >"$work/config.json" <<EOF
{
    "server": "127.0.0.1",
    "server_port": $server_port,
    "local_address": "127.0.0.1",
    "local_port": $local_port,
    "password": "$password",
    "method": "$METHOD",
    "timeout": 60
}
EOF
say "config ($work/config.json):"
sed 's/"password": ".*"/"password": "(the generated key)"/' "$work/config.json" >&2

mkdir "$work/site"
page="Hello from behind the proxy: this page came through ss-local and ss-server ($METHOD)."
printf '<!doctype html>\n<html><body><p>%s</p></body></html>\n' "$page" >"$work/site/index.html"

say "starting the HTTP server on 127.0.0.1:$http_port"
python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/site" >"$work/http.log" 2>&1 &
pids+=($!)
wait_for_port http "$http_port" "$!"

# --allow-private-targets: the page is on loopback, which ss-server refuses by default.
say "starting ss-server on 127.0.0.1:$server_port"
"$bin/ss-server" -c "$work/config.json" --allow-private-targets >"$work/ss-server.log" 2>&1 &
pids+=($!)
wait_for_port ss-server "$server_port" "$!"

say "starting ss-local (SOCKS5) on 127.0.0.1:$local_port"
"$bin/ss-local" -c "$work/config.json" >"$work/ss-local.log" 2>&1 &
pids+=($!)
wait_for_port ss-local "$local_port" "$!"

url="http://localhost:$http_port/"
say "curl --socks5-hostname 127.0.0.1:$local_port $url"
# --noproxy '': a NO_PROXY in the environment must not send localhost around the proxy.
if ! body=$(curl --silent --show-error --fail --max-time 20 --noproxy '' \
    --socks5-hostname "127.0.0.1:$local_port" "$url"); then
    echo "demo: the fetch through the proxy failed; logs:" >&2
    for log in ss-local ss-server http; do
        printf -- '--- %s ---\n' "$log" >&2
        cat "$work/$log.log" >&2
    done
    exit 1
fi
printf '%s\n' "$body"
if [[ $body != *"$page"* ]]; then
    echo "demo: the page came back different from what the server has" >&2
    exit 1
fi
say "OK: the page came through the proxy"
