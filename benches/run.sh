#!/usr/bin/env bash
# firedrill against direct connections and the proxies users would pick
# instead, on loopback, in one run:
#   configurations  direct; firedrill with no active fault; firedrill with a
#                   fault active on another data center; HAProxy (http mode
#                   for HTTP, tcp mode for redis); fault (fault-cli, a TCP
#                   proxy: it carries the HTTP workloads as byte streams)
#   workloads       HTTP small responses with keep-alive (wrk, 64 conns);
#                   a new connection per request (16 conns); 1 MiB bodies
#                   (8 conns); redis SET and GET, plain and pipelined 16
#                   (redis-benchmark, 50 conns); memory per idle connection
#                   (10,000 open, or what the open-files limit allows);
#                   fidelity of a 100 ms delay; how fast a blackhole reaches
#                   10,000 open connections (benches/reaction.rs)
# Configurations are interleaved within each round (order reversed every
# other round) so machine drift cancels out. For every run it records the
# proxy's own CPU time (utime + stime from /proc/PID/stat) and peak RSS
# (VmHWM, reset before the run). Load generator, upstreams and proxy share
# the machine, so CPU per request is the fair comparison and requests/s the
# user-visible one.
#
# Needs: nginx, wrk, redis-server, redis-benchmark, haproxy, python3, curl
# (Debian packages nginx wrk redis-server redis-tools haproxy python3 curl)
# and optionally `fault` (cargo install --locked fault-cli --root DIR; put
# DIR/bin on PATH or set FAULT=DIR/bin/fault). Run by hand, never in CI:
#   bash benches/run.sh                 # about 20 minutes on 2 cores
#   QUICK=1 bash benches/run.sh         # smoke run, about 2 minutes
# Knobs: ROUNDS (3), SECONDS_PER_RUN (10), QUICK=1 (1 round of 2 s, 1,000
# idle and reaction connections), OUT (/tmp/firedrill-bench.md), FAULT (path
# of fault), CONNECTIONS (10000: idle and reaction connections, capped so a
# proxy's two descriptors per connection fit the open-files limit),
# WORKLOADS (space-separated subset of: http-ka http-close http-1mib
# redis-set redis-get redis-set-p16 redis-get-p16 idle fidelity reaction),
# FIREDRILL_ARGS (extra arguments for `firedrill run`, e.g. "--threads 1").
# The Markdown report goes to stdout and to OUT; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="bash benches/run.sh"
for knob in QUICK ROUNDS SECONDS_PER_RUN CONNECTIONS WORKLOADS FIREDRILL_ARGS FAULT OUT; do
  if [ -n "${!knob:-}" ]; then
    command_line="$knob=$(printf '%q' "${!knob}") $command_line"
  fi
done

quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  rounds=${ROUNDS:-1}
  secs=${SECONDS_PER_RUN:-2}
  wanted_connections=${CONNECTIONS:-1000}
else
  rounds=${ROUNDS:-3}
  secs=${SECONDS_PER_RUN:-10}
  wanted_connections=${CONNECTIONS:-10000}
fi
out=${OUT:-/tmp/firedrill-bench.md}
workloads=${WORKLOADS:-http-ka http-close http-1mib redis-set redis-get redis-set-p16 redis-get-p16 idle fidelity reaction}
fault_bin=${FAULT:-$(command -v fault || true)}
started=$(date +%s)

for program in nginx wrk redis-server redis-benchmark haproxy python3 curl; do
  command -v "$program" >/dev/null || {
    echo "$program missing: apt-get install nginx wrk redis-server redis-tools haproxy python3 curl" >&2
    exit 1
  }
done
notes=()
if [ ! -x "$fault_bin" ]; then
  notes+=("fault was not found (set FAULT=/path/to/fault): its rows are missing.")
  fault_bin=
fi

# Two descriptors per proxied connection, plus some for listeners and logs.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)
connections=$wanted_connections
if [ "$fd_limit" != unlimited ] && [ $((2 * connections + 200)) -gt "$fd_limit" ]; then
  connections=$(((fd_limit - 200) / 2))
  notes+=("$(printf "%'d" "$wanted_connections") connections asked, $(printf "%'d" "$connections") used: a proxy holds two descriptors per connection and the open-files limit is $(printf "%'d" "$fd_limit").")
fi

work=$(mktemp -d /tmp/firedrill-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "[$(date +%T)] $*" >&2; }
wants() { [[ " $workloads " == *" $1 "* ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  return 1
}
stop() { # pid: stop one process this script started, and forget it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

say "building firedrill (release) and the reaction bench"
cargo build --release --quiet
firedrill_version="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' with local changes')"
reaction_bin=$(cargo bench --bench reaction --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "reaction" and m.get("executable"):
        print(m["executable"])')

# ---- upstreams -------------------------------------------------------------
nginx_port=$(free_port)
redis_port=$(free_port)
mkdir -p "$work/nginx" "$work/www"
head -c 1048576 /dev/urandom >"$work/www/big"
chmod a+rx "$work" "$work/www" # nginx workers run as nobody
chmod a+r "$work/www/big"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port backlog=4096;
    location = /big { root $work/www; }
    location / { return 200 "hello from the upstream\n"; }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --maxclients $((connections + 200)) --tcp-backlog 4096 >"$work/redis.log" &
pids+=($!)

# ---- proxies ---------------------------------------------------------------
# plan FILE ADMIN_PORT HTTP_PORT TCP_PORT
plan() {
  cat >"$1" <<PLAN
[admin]
listen = "127.0.0.1:$2"
[datacenters.pangyo]
[datacenters.ansan]
[services.web]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:$3"
upstream = "127.0.0.1:$nginx_port"
[services.cache]
datacenter = "pangyo"
protocol = "tcp"
listen = "127.0.0.1:$4"
upstream = "127.0.0.1:$redis_port"
[services.maps]
datacenter = "ansan"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9"
[scenarios.ansan-fire]
description = "the game-day state: rules exist but match nothing measured here"
[[scenarios.ansan-fire.faults]]
datacenter = "ansan"
action = "blackhole"
[scenarios.web-slow]
[[scenarios.web-slow.faults]]
service = "web"
action = "delay"
latency = "100ms"
[scenarios.cache-slow]
[[scenarios.cache-slow.faults]]
service = "cache"
action = "delay"
latency = "100ms"
direction = "upstream"
[scenarios.pangyo-fire]
[[scenarios.pangyo-fire.faults]]
datacenter = "pangyo"
action = "blackhole"
PLAN
}
# start_firedrill NAME: starts a firedrill on fresh ports; sets NAME_pid,
# NAME_admin, NAME_http, NAME_tcp.
start_firedrill() {
  local admin http tcp
  admin=$(free_port) http=$(free_port) tcp=$(free_port)
  plan "$work/$1.toml" "$admin" "$http" "$tcp"
  # shellcheck disable=SC2086 # FIREDRILL_ARGS is a list of arguments
  RUST_LOG=warn ./target/release/firedrill run --config "$work/$1.toml" ${FIREDRILL_ARGS:-} >>"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  printf -v "$1_pid" %s "$pid"
  printf -v "$1_admin" %s "$admin"
  printf -v "$1_http" %s "$http"
  printf -v "$1_tcp" %s "$tcp"
  wait_port "$admin" && wait_port "$http" && wait_port "$tcp"
}
# start_haproxy NAME MAXCONN: http mode and tcp mode frontends in one process.
start_haproxy() {
  local http tcp
  http=$(free_port) tcp=$(free_port)
  cat >"$work/$1.cfg" <<CFG
global
  nbthread $(nproc)
  maxconn $2
defaults
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  maxconn $2
frontend web
  mode http
  bind 127.0.0.1:$http
  default_backend nginx
backend nginx
  mode http
  server nginx 127.0.0.1:$nginx_port
frontend cache
  mode tcp
  bind 127.0.0.1:$tcp
  default_backend redis
backend redis
  mode tcp
  server redis 127.0.0.1:$redis_port
CFG
  haproxy -db -f "$work/$1.cfg" >>"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  printf -v "$1_pid" %s "$pid"
  printf -v "$1_http" %s "$http"
  printf -v "$1_tcp" %s "$tcp"
  wait_port "$http" && wait_port "$tcp"
}
# start_fault NAME [FAULTS_JSON]: `fault` has tcp (and udp) proxies only, so
# the HTTP workloads go through it as byte streams. FAULTS_JSON is the fault
# chain of the single, endless phase, applied to both proxies.
start_fault() {
  local http tcp chain=${2:-}
  http=$(free_port) tcp=$(free_port)
  local proxies='[]'
  if [ -n "$chain" ]; then
    proxies="[{\"proxy\": \"web\", \"faults\": $chain}, {\"proxy\": \"cache\", \"faults\": $chain}]"
  fi
  cat >"$work/$1.json" <<RUN
{
  "schema_version": 1,
  "name": "$1",
  "proxies": [
    {"name": "web", "protocol": "tcp", "listen": "127.0.0.1:$http", "upstream": "127.0.0.1:$nginx_port"},
    {"name": "cache", "protocol": "tcp", "listen": "127.0.0.1:$tcp", "upstream": "127.0.0.1:$redis_port"}
  ],
  "phases": [{"name": "steady", "proxies": $proxies}]
}
RUN
  "$fault_bin" --output json --color never run "$work/$1.json" >"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  printf -v "$1_pid" %s "$pid"
  printf -v "$1_http" %s "$http"
  printf -v "$1_tcp" %s "$tcp"
  wait_port "$http" && wait_port "$tcp"
}

wait_port "$nginx_port" || exit 1
wait_port "$redis_port" || exit 1
start_firedrill fd
start_haproxy hp 4096
configs="direct firedrill firedrill-other haproxy"
if [ -n "$fault_bin" ]; then
  start_fault ft
  configs="$configs fault"
  notes+=("fault $("$fault_bin" --version | awk '{print $2}') has tcp, udp and dns proxies but no HTTP mode: the HTTP workloads pass through it as byte streams (layer 4), so its HTTP rows compare with an L4 relay, not with an HTTP proxy like firedrill or HAProxy http mode.")
  notes+=("fault's \`latency\` fault delays only the first traffic of a TCP stream; the fidelity rows use its \`jitter\` fault (100-100 ms, probability 1, to-upstream), which delays every read.")
fi

# ---- measurement helpers ---------------------------------------------------
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
reset_peak() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# Ports and process of a configuration: sets port_http, port_tcp, proxy.
target() {
  case $1 in
    direct) port_http=$nginx_port port_tcp=$redis_port proxy= ;;
    firedrill | firedrill-other) port_http=$fd_http port_tcp=$fd_tcp proxy=$fd_pid ;;
    haproxy) port_http=$hp_http port_tcp=$hp_tcp proxy=$hp_pid ;;
    fault) port_http=$ft_http port_tcp=$ft_tcp proxy=$ft_pid ;;
  esac
}
label() { # config protocol
  case $1 in
    direct) echo "direct" ;;
    firedrill) echo "firedrill" ;;
    firedrill-other) echo "firedrill, fault on other DC" ;;
    haproxy) echo "HAProxy $2 mode" ;;
    fault) echo "fault (tcp)" ;;
  esac
}
admin() { curl -sf -o /dev/null -X "$1" "http://127.0.0.1:$fd_admin/faults$2"; }

# wrk output -> "requests/s p50_ms p99_ms max_ms requests errors"
parse_wrk() {
  awk '
    function toms(v) {
      if (v ~ /us$/) return v * 0.001
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000
      if (v ~ /s$/) return v * 1000
      return v
    }
    $1 == "Latency" && NF >= 4 { max = toms($4) }
    $1 == "50%" { p50 = toms($2) }
    $1 == "99%" { p99 = toms($2) }
    / requests in / { requests = $1 }
    /Requests\/sec/ { rps = $2 }
    /Socket errors/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx/ { errors += $NF }
    END { printf "%s %s %s %s %s %d\n", rps, p50, p99, max, requests, errors }'
}

# measure WORKLOAD CONFIG ROUND: one bounded load run, one line of results.tsv.
measure() {
  local workload=$1 config=$2 round=$3
  target "$config"
  local before=0 after=0 text unit protocol=http rps p50 p99 max requests errors
  if [ "$config" = firedrill-other ]; then admin POST /ansan-fire; fi
  if [ -n "$proxy" ]; then
    reset_peak "$proxy"
    before=$(cpu_ticks "$proxy")
  fi
  case $workload in
    http-ka | http-close | http-1mib)
      local args=(-t2 -c64) path=/
      case $workload in
        http-close) args=(-t2 -c16 -H 'Connection: close') ;;
        http-1mib) args=(-t2 -c8) path=/big ;;
      esac
      text=$(timeout $((secs + 30)) wrk "${args[@]}" -d"${secs}s" --latency "http://127.0.0.1:$port_http$path") || true
      read -r rps p50 p99 max requests errors <<<"$(parse_wrk <<<"$text")"
      unit=req/s
      if [ "$workload" = http-1mib ]; then unit="MiB/s"; fi
      case $workload in
        http-ka) text="HTTP small, keep-alive (64 conns)" ;;
        http-close) text="HTTP small, new connection per request (16 conns)" ;;
        http-1mib) text="HTTP 1 MiB body, keep-alive (8 conns)" ;;
      esac
      ;;
    redis-*)
      protocol=tcp
      # redis-benchmark counts requests, not seconds: sized for about
      # SECONDS_PER_RUN through a proxy on a loaded 2-core machine.
      local test=${workload#redis-} pipeline=1 n=$((secs * 40000))
      if [[ $test == *-p16 ]]; then test=${test%-p16} pipeline=16 n=$((secs * 400000)); fi
      local csv
      csv=$(timeout $((secs * 6 + 30)) redis-benchmark -h 127.0.0.1 -p "$port_tcp" -c 50 -n "$n" \
        -t "$test" -P "$pipeline" --csv 2>/dev/null) || true
      # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
      read -r rps p50 p99 max <<<"$(awk -F, 'NR == 2 {gsub("\"", ""); print $2, $5, $7, $8}' <<<"$csv")"
      requests=$n errors=0
      if [ -z "$rps" ]; then requests=0 errors=$n; fi
      unit=ops/s
      text="redis ${test^^} (50 conns)"
      if [ "$pipeline" = 16 ]; then text="redis ${test^^}, pipelined 16 (50 conns)"; fi
      ;;
  esac
  local cpu=- rss=-
  if [ -n "$proxy" ]; then
    after=$(cpu_ticks "$proxy")
    cpu=$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')
    rss=$(rss_kib "$proxy" VmHWM)
  fi
  if [ "$config" = firedrill-other ]; then admin DELETE ""; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$text" "$unit" "$config" \
    "$(label "$config" "$protocol")" "${rps:--}" "${p50:--}" "${p99:--}" "${requests:-0}" "$cpu" "$rss" "${errors:-0}" \
    >>"$work/results.tsv"
  say "  $workload $config: ${rps:-failed} $unit, p99 ${p99:--} ms, proxy CPU ${cpu} s, peak RSS ${rss} KiB"
}

# idle ROUND CONFIG: a fresh proxy, N connections held open, RSS before/after.
idle() {
  local round=$1 config=$2 pid port started=0
  # HAProxy refuses to start unless 2 * maxconn + 17 descriptors fit.
  local maxconn=$((connections + 100 < (fd_limit - 40) / 2 ? connections + 100 : (fd_limit - 40) / 2))
  local name=idle$config
  case $config in
    firedrill) start_firedrill "$name" && started=1; pid=$idlefiredrill_pid port=$idlefiredrill_tcp ;;
    haproxy) start_haproxy "$name" "$maxconn" && started=1; pid=$idlehaproxy_pid port=$idlehaproxy_tcp ;;
    fault) start_fault "$name" && started=1; pid=$idlefault_pid port=$idlefault_tcp ;;
  esac
  if [ "$started" = 0 ]; then
    notes+=("idle connections through $config, round $round: the proxy did not start ($(grep -v NOTICE "$work/$name.log" | tail -n 1))")
    stop "$pid"
    return
  fi
  sleep 0.5
  local before after
  before=$(rss_kib "$pid" VmRSS)
  python3 benches/hold_connections.py "127.0.0.1:$port" "$connections" >"$work/hold.out" 2>&1 &
  local holder=$!
  pids+=("$holder")
  for _ in $(seq 1200); do
    grep -q '^open' "$work/hold.out" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q '^open' "$work/hold.out"; then
    sleep 1
    after=$(rss_kib "$pid" VmRSS)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$config" "$(label "$config" tcp)" "$connections" "$before" "$after" >>"$work/idle.tsv"
    say "  idle $config: RSS $before KiB -> $after KiB with $connections connections"
  else
    notes+=("idle connections through $config, round $round: $(tail -n 1 "$work/hold.out")")
    say "  idle $config failed: $(tail -n 1 "$work/hold.out")"
  fi
  stop "$holder"
  stop "$pid"
}

# fidelity ROUND CONFIG PROTOCOL: client-observed latency with a 100 ms delay.
fidelity() {
  local round=$1 config=$2 protocol=$3 port target_ms=100 rps p50 p99 max requests errors text
  case $config in
    direct) port=$([ "$protocol" = http ] && echo "$nginx_port" || echo "$redis_port") target_ms=0 ;;
    firedrill)
      port=$([ "$protocol" = http ] && echo "$fd_http" || echo "$fd_tcp")
      admin POST "/$([ "$protocol" = http ] && echo web-slow || echo cache-slow)"
      ;;
    fault) port=$([ "$protocol" = http ] && echo "$ftslow_http" || echo "$ftslow_tcp") ;;
  esac
  if [ "$protocol" = http ]; then
    text=$(timeout $((secs + 30)) wrk -t1 -c4 -d"${secs}s" --latency "http://127.0.0.1:$port/") || true
    read -r rps p50 p99 max requests errors <<<"$(parse_wrk <<<"$text")"
    text="HTTP keep-alive, 4 connections (wrk)"
  else
    read -r requests p50 p99 max <<<"$(timeout $((secs + 30)) python3 benches/ping_latency.py "127.0.0.1:$port" 4 "$secs")" || true
    text="redis PING, 4 open connections (ping_latency.py)"
  fi
  if [ "$config" = firedrill ]; then admin DELETE ""; fi
  local name
  case $config in
    direct) name="direct, no delay" ;;
    firedrill) name="firedrill, delay 100ms" ;;
    fault) name="fault, jitter 100-100 ms, probability 1, to-upstream" ;;
  esac
  if [ "$config" = firedrill ] && [ "$protocol" = tcp ]; then name="$name, direction upstream"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$text" "$config" "$name" "$target_ms" "${requests:-0}" \
    "${p50:--}" "${p99:--}" "${max:--}" >>"$work/fidelity.tsv"
  say "  fidelity $protocol $config: p50 ${p50:--} ms, p99 ${p99:--} ms"
}

# reaction ROUND: a fresh firedrill, N connections pinging through the tcp
# service, then a blackhole on its data center (benches/reaction.rs).
reaction() {
  local round=$1 line
  if ! start_firedrill rfd; then
    notes+=("reaction, round $round: firedrill did not start ($(tail -n 1 "$work/rfd.log"))")
    stop "$rfd_pid"
    return
  fi
  line=$(PROXY=127.0.0.1:$rfd_tcp ADMIN=127.0.0.1:$rfd_admin SCENARIO=pangyo-fire CONNECTIONS=$connections \
    PING_INTERVAL_MS=$((connections / 25 > 5 ? connections / 25 : 5)) timeout 300 "$reaction_bin" 2>>"$work/reaction.err" | tail -n 1) || true
  stop "$rfd_pid"
  if [[ $line == reaction* ]]; then
    awk -v r="$round" '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[i] = kv[2] }
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, v[2], v[3], v[4], v[5], v[6], v[7], v[8] }' <<<"$line" >>"$work/reaction.tsv"
    say "  reaction: $line"
  else
    notes+=("reaction, round $round: failed ($(tail -n 1 "$work/reaction.err" 2>/dev/null))")
    say "  reaction failed"
  fi
}

# ---- the run ---------------------------------------------------------------
if wants fidelity && [ -n "$fault_bin" ]; then
  start_fault ftslow '[{"type": "jitter", "flow": "to-upstream", "min_delay_ms": 100.0, "max_delay_ms": 100.0, "probability": 1.0}]'
fi
say "warming up every configuration"
for config in $configs; do
  target "$config"
  timeout 10 wrk -t1 -c8 -d1s "http://127.0.0.1:$port_http/" >/dev/null || true
  timeout 10 redis-benchmark -h 127.0.0.1 -p "$port_tcp" -c 8 -n 20000 -t get -q >/dev/null 2>&1 || true
done

reverse() { local out=; for word in $1; do out="$word $out"; done; echo "$out"; }
for round in $(seq "$rounds"); do
  order=$configs
  if [ $((round % 2)) = 0 ]; then order=$(reverse "$configs"); fi
  say "round $round of $rounds, order: $order"
  for workload in http-ka http-close http-1mib redis-set redis-get redis-set-p16 redis-get-p16; do
    wants "$workload" || continue
    for config in $order; do measure "$workload" "$config" "$round"; done
  done
  if wants idle; then
    for config in firedrill haproxy ${fault_bin:+fault}; do idle "$round" "$config"; done
  fi
  if wants fidelity; then
    for protocol in http tcp; do
      for config in direct firedrill ${fault_bin:+fault}; do fidelity "$round" "$config" "$protocol"; done
    done
  fi
  if wants reaction; then reaction "$round"; fi
done

# ---- report ----------------------------------------------------------------
elapsed=$(($(date +%s) - started))
{
  echo "# firedrill benchmarks"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) memory, Linux $(uname -r), open-files limit $fd_limit"
  echo "- command: \`$command_line\` ($rounds round(s) of ${secs} s per run, $(printf "%'d" "$connections") idle and reaction connections; took $((elapsed / 60)) min $((elapsed % 60)) s)"
  echo "- firedrill $firedrill_version (release build${FIREDRILL_ARGS:+, run with $FIREDRILL_ARGS}); $(nginx -v 2>&1 | sed 's/nginx version: //'), 1 worker; $(haproxy -v | awk 'NR==1 {print "HAProxy " $3}'), $(nproc) threads; redis $(redis-server --version | awk '{print $3}' | cut -d= -f2); wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')${fault_bin:+; fault $("$fault_bin" --version | awk '{print $2}')}"
  echo "- load generator, upstreams and proxies share the machine; every configuration is measured in every round, in alternating order"
  echo
  python3 benches/report.py "$work"
  if [ ${#notes[@]} -gt 0 ]; then
    echo "## Notes"
    echo
    for note in "${notes[@]}"; do echo "- $note"; done
    echo
  fi
} | tee "$out"
say "report written to $out"
