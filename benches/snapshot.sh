#!/usr/bin/env bash
# Pictures of a game day without Grafana: runs `firedrill demo` on a small
# plan of its own (three data centers, stand-in upstreams, free loopback
# ports, so a running demo is no obstacle), a Prometheus scraping it every
# second, curl traffic through every data center, sets Pangyo on fire for a
# while, lifts it, and saves Prometheus's own graph page for a few key
# queries as PNGs, rendered by headless Chromium:
#   error-ratio.png      failed / all requests per data center
#   request-rate.png     requests per second per data center
#   scenario-active.png  firedrill_scenario_active per scenario
#
# Needs: prometheus, chromium-headless-shell, curl, python3 (Debian packages
# of those names). Run by hand:
#   bash benches/snapshot.sh [OUTPUT_DIR]      (default /tmp/firedrill-snapshots)
# Knobs (seconds): BEFORE (default 30) of calm traffic, FIRE (60) with
# pangyo-fire active, AFTER (30) of recovery; the whole run takes about
# BEFORE + FIRE + AFTER + 30 s after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-/tmp/firedrill-snapshots}
before=${BEFORE:-30}
fire=${FIRE:-60}
after=${AFTER:-30}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for program in prometheus chromium-headless-shell curl python3; do
  command -v "$program" >/dev/null || {
    echo "$program missing: apt-get install prometheus chromium-headless-shell curl python3" >&2
    exit 1
  }
done
mkdir -p "$out"

say() { echo "[$(date +%T)] $*"; }
wait_url() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
admin_port=$(free_port)
admin=http://127.0.0.1:$admin_port
# name datacenter protocol: listen and upstream ports are picked here.
services="talk pangyo http
pay pangyo http
session-cache pangyo tcp
maps ansan http
emoticons seoul http"
http_ports=()
{
  printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$admin_port"
  printf '[datacenters.%s]\n' pangyo ansan seoul
  while read -r name dc protocol; do
    port=$(free_port)
    [ "$protocol" = http ] && http_ports+=("$port")
    printf '[services.%s]\ndatacenter = "%s"\nprotocol = "%s"\nlisten = "127.0.0.1:%s"\nupstream = "127.0.0.1:%s"\n' \
      "$name" "$dc" "$protocol" "$port" "$(free_port)"
  done <<<"$services"
  printf '[scenarios.pangyo-fire]\nmax_duration = "30m"\n'
  printf '[[scenarios.pangyo-fire.faults]]\ndatacenter = "pangyo"\naction = "blackhole"\n'
} >"$work/plan.toml"

# The binary itself, not `cargo run`, so the PID killed is firedrill's.
cargo build --release --quiet
target/release/firedrill demo --config "$work/plan.toml" >"$work/firedrill.log" 2>&1 &
pids+=($!)
wait_url "$admin/healthz"
say "firedrill demo up on $admin"

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: firedrill
    static_configs:
      - targets: ['127.0.0.1:$admin_port']
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address=127.0.0.1:0 >"$work/prometheus.log" 2>&1 &
pids+=($!)
# Prometheus 2.42 logs the bound port with "Listening on" (the "Start
# listening for connections" line still says port 0).
prom=
for _ in $(seq 100); do
  prom=$(grep -o 'msg="Listening on" address=127\.0\.0\.1:[1-9][0-9]*' "$work/prometheus.log" | head -1 | sed 's/.*address=//') || true
  [ -n "$prom" ] && break
  sleep 0.1
done
[ -n "$prom" ] || { cat "$work/prometheus.log" >&2; echo "prometheus did not start" >&2; exit 1; }
prom=http://$prom
wait_url "$prom/-/ready"
say "prometheus at $prom"

# One curl loop per service, each ending by itself at the deadline; a
# blackholed request gives up after 0.5 s.
deadline=$(( $(date +%s) + before + fire + after + 5 ))
for port in "${http_ports[@]}"; do
  (
    while [ "$(date +%s)" -lt "$deadline" ]; do
      curl -s -o /dev/null -m 0.5 "http://127.0.0.1:$port/hello" || true
      sleep 0.05
    done
  ) &
  pids+=($!)
done

say "calm traffic for ${before}s"
sleep "$before"
say "pangyo-fire for ${fire}s"
curl -sf -o /dev/null -X POST "$admin/faults/pangyo-fire"
sleep "$fire"
say "lifting everything; recovery for ${after}s"
curl -sf -o /dev/null -X DELETE "$admin/faults"
sleep "$after"

# The whole run, from the first scrape on.
range=$(( before + fire + after + 5 ))s
window=5s
# As the dashboard counts failures: these outcomes, and 5xx answers.
failed="rate(firedrill_requests_total{outcome=~\"dropped|blackholed|error|upstream_error\"}[$window]) or rate(firedrill_requests_total{code=\"5xx\"}[$window])"
snapshot() { # NAME PROMQL
  local url
  url="$prom/graph?g0.expr=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$2")&g0.tab=0&g0.stacked=0&g0.range_input=$range"
  timeout 60 chromium-headless-shell --headless --no-sandbox --disable-gpu \
    --disable-background-networking --disable-component-update --disable-sync --no-first-run \
    --user-data-dir="$work/chromium" --window-size=1400,900 --virtual-time-budget=10000 \
    --screenshot="$out/$1.png" "$url" >>"$work/chromium.log" 2>&1 \
    || { cat "$work/chromium.log" >&2; echo "chromium failed on $1" >&2; exit 1; }
  say "$out/$1.png: $2"
}
snapshot error-ratio "(sum by (datacenter) ($failed) or sum by (datacenter) (rate(firedrill_requests_total[$window])) * 0) / sum by (datacenter) (rate(firedrill_requests_total[$window]))"
snapshot request-rate "sum by (datacenter) (rate(firedrill_requests_total[$window]))"
snapshot scenario-active "firedrill_scenario_active"
