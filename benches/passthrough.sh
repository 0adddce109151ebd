#!/usr/bin/env bash
# Pass-through cost: requests/s and latency through firedrill (no active
# fault, and with a fault active on another data center) against direct to
# the upstream, interleaved A B A B in one run so machine drift cancels out.
#
# Needs: nginx, wrk, redis-server, redis-benchmark (Debian packages nginx,
# wrk, redis-server, redis-tools). Run by hand: bash benches/passthrough.sh
# Knobs: ROUNDS (default 3), SECONDS_PER_RUN (default 10), CONNECTIONS (64).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-10}
conns=${CONNECTIONS:-64}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

nginx_port=$(free_port); redis_port=$(free_port)
http_port=$(free_port); tcp_port=$(free_port); admin_port=$(free_port)

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 200 "hello from the upstream\n"; }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)

cat > "$work/plan.toml" <<PLAN
[admin]
listen = "127.0.0.1:$admin_port"
[datacenters.pangyo]
[datacenters.ansan]
[services.web]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:$http_port"
upstream = "127.0.0.1:$nginx_port"
[services.cache]
datacenter = "pangyo"
protocol = "tcp"
listen = "127.0.0.1:$tcp_port"
upstream = "127.0.0.1:$redis_port"
[services.maps]
datacenter = "ansan"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9"
[scenarios.ansan-fire]
[[scenarios.ansan-fire.faults]]
datacenter = "ansan"
action = "blackhole"
PLAN

cargo build --release --quiet
RUST_LOG=warn ./target/release/firedrill run --config "$work/plan.toml" &
proxy=$!
pids+=($proxy)
wait_port "$nginx_port"; wait_port "$redis_port"; wait_port "$http_port"; wait_port "$admin_port"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

http_run() { # label port
  local before after out
  before=$(cpu_ticks)
  out=$(timeout $((secs + 30)) wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$2/")
  after=$(cpu_ticks)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local cpu="-"
  if [ "$2" != "$nginx_port" ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_sec" -v r="$rps" -v s="$secs" 'BEGIN { printf "%.1f", t / hz / (r * s) * 1e6 }')
  fi
  printf '%-28s %10s req/s  p50 %8s  p99 %8s  proxy CPU/req %6s us\n' "$1" "$rps" "$p50" "$p99" "$cpu"
}

redis_run() { # label port [pipeline]
  local before after out
  before=$(cpu_ticks)
  out=$(timeout 120 redis-benchmark -h 127.0.0.1 -p "$2" -c 50 -n 200000 -t get,set -P "${3:-1}" --csv 2>/dev/null)
  after=$(cpu_ticks)
  local set get cpu="-"
  set=$(awk -F'"' '$2=="SET" {print $4}' <<<"$out")
  get=$(awk -F'"' '$2=="GET" {print $4}' <<<"$out")
  if [ "$2" != "$redis_port" ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_sec" 'BEGIN { printf "%.1f", t / hz / 400000 * 1e6 }')
  fi
  printf '%-28s SET %10s ops/s  GET %10s ops/s  proxy CPU/op %6s us\n' "$1" "$set" "$get" "$cpu"
}

echo "firedrill pass-through, $(nproc) cores, $rounds rounds of ${secs}s, $conns connections ($(date -u +%F))"
for round in $(seq "$rounds"); do
  echo "-- round $round"
  http_run "http direct" "$nginx_port"
  http_run "http firedrill (no fault)" "$http_port"
  curl -s -X POST "http://127.0.0.1:$admin_port/faults/ansan-fire" >/dev/null
  http_run "http firedrill (other dc)" "$http_port"
  curl -s -X DELETE "http://127.0.0.1:$admin_port/faults" >/dev/null
  redis_run "redis direct" "$redis_port"
  redis_run "redis firedrill" "$tcp_port"
  redis_run "redis direct -P 16" "$redis_port" 16
  redis_run "redis firedrill -P 16" "$tcp_port" 16
done
