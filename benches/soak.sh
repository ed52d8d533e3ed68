#!/usr/bin/env bash
# Soak: Cutover for SOAK_MINUTES at about LOAD_PCT % of its measured
# capacity, with its config rewritten every 5 s, a backend's health check
# flapping and a backend restarted every few minutes; RSS, fds, threads,
# open connections and p99 sampled every 10 s into a CSV, plotted to a PNG,
# and the drift (first minutes vs last minutes) printed as a table.
# A measurement, not a test: it passes or fails nothing.
#
#   benches/soak.sh                                   # 30 minutes
#   SOAK_MINUTES=3 FLAP_EVERY=45 RESTART_EVERY=70 benches/soak.sh
#
# Environment:
#   SOAK_MINUTES   length of the loaded phase (30)
#   LOAD_PCT       share of the measured capacity to hold (80)
#   CAPACITY_SECONDS  length of the capacity run (10)
#   THREADS        wrk threads (2)
#   CONNS          connections of the capacity run (64)
#   DELAY_MS       pause of each load connection between its requests (10):
#                  the rate is held by the number of connections
#   REWRITE_EVERY  seconds between config rewrites (5): weights 90/10 <-> 10/90
#   FLAP_EVERY     seconds between health flaps of green (150); each lasts
#                  FLAP_SECONDS (20): its /healthz answers 503
#   RESTART_EVERY  seconds between restarts of blue (210): stopped, 2 s
#                  later started again on the same port
#   OUT            directory of soak.csv, soak.png, drift.md (benches/soak-out)
#   CUTOVER_BIN    this cutover binary instead of building target/dist/cutover
#   KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
#
# Load: wrk cannot hold a rate, so each of N connections waits DELAY_MS
# after each response (wrk's Lua `delay()` hook): the rate is about
# N * 1000 / (DELAY_MS + latency). N starts at target * DELAY_MS / 1000 and
# is corrected once after the first window from the rate reached. Every 10 s
# window is one wrk run (`--latency`), so each CSV row has the client's own
# p99 and error counts for that window; the server's p99 comes from the
# cutover_request_duration_seconds histogram over the same window. Tokio's
# task count is not exported by Cutover; each open client connection is one
# task, so `connections` (cutover_connections_open) and `threads` stand in.
#
# Needs wrk, nginx, curl, python3, and matplotlib for the PNG (apt-get
# install python3-matplotlib; without it the CSV and the table are still
# written). The machine is shared: numbers are noisy; look at the trend.

set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOAK_MINUTES=${SOAK_MINUTES:-30}
LOAD_PCT=${LOAD_PCT:-80}
CAPACITY_SECONDS=${CAPACITY_SECONDS:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
DELAY_MS=${DELAY_MS:-10}
REWRITE_EVERY=${REWRITE_EVERY:-5}
FLAP_EVERY=${FLAP_EVERY:-150}
FLAP_SECONDS=${FLAP_SECONDS:-20}
RESTART_EVERY=${RESTART_EVERY:-210}
OUT=${OUT:-$ROOT/benches/soak-out}
CUTOVER_BIN=${CUTOVER_BIN:-}
KEEP_TMP=${KEEP_TMP:-0}
WINDOW=10
TMP=$(mktemp -d /tmp/cutover-soak.XXXXXX)
BG_PIDS=()

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $TMP/blue/nginx.pid ]] && kill "$(cat "$TMP/blue/nginx.pid")" 2>/dev/null || true
  sleep 1
  for pid in "${BG_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || die "missing $tool (apt-get install wrk nginx-light curl python3)"
done
PLOT_PY=
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import matplotlib' 2>/dev/null; then PLOT_PY=$py; break; fi
done
[[ -n $PLOT_PY ]] || log "no matplotlib (apt-get install python3-matplotlib): no PNG"

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
wait_http() {
  local i
  for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$1 did not answer within 30 s"
}
event() { printf '%s %s\n' "$(date +%s)" "$1" >>"$TMP/events"; log "$1"; }

# ------------------------------------------------------------ backends

# start_backend NAME PORT: nginx answering its name on /, and /healthz
# with 503 while $TMP/NAME/down exists.
start_backend() {
  local name=$1 port=$2 dir=$TMP/$1
  mkdir -p "$dir/temp"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $dir/temp;
  server {
    listen 127.0.0.1:$port reuseport;
    location = /healthz {
      default_type text/plain;
      if (-f $dir/down) { return 503 "down\n"; }
      return 200 "ok\n";
    }
    location / { default_type text/plain; return 200 "$name\n"; }
  }
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
  BG_PIDS+=($!)
  eval "PID_$name=$!"
  wait_http "http://127.0.0.1:$port/healthz"
}

# ------------------------------------------------------------ cutover

write_config() { # BLUE GREEN
  cat >"$TMP/cutover.toml.tmp" <<CONF
[listen]
http = "127.0.0.1:$HTTP_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[server]
workers = 2

[limits]
max_connections = 4000

[backends.blue]
endpoints = ["127.0.0.1:$BLUE_PORT"]
health = { path = "/healthz", interval = "1s", timeout = "1s" }

[backends.green]
endpoints = ["127.0.0.1:$GREEN_PORT"]
health = { path = "/healthz", interval = "1s", timeout = "1s" }

[[routes]]
name = "app"
weights = { blue = $1, green = $2 }
CONF
  mv "$TMP/cutover.toml.tmp" "$TMP/cutover.toml"
}

rewriter() {
  local flip=0
  while sleep "$REWRITE_EVERY"; do
    if ((flip)); then write_config 90 10; else write_config 10 90; fi
    flip=$((1 - flip))
  done
}

flapper() {
  while sleep "$FLAP_EVERY"; do
    event "flap: green unhealthy for ${FLAP_SECONDS}s"
    touch "$TMP/green/down"
    sleep "$FLAP_SECONDS"
    rm -f "$TMP/green/down"
    event "flap: green healthy"
  done
}

restarter() {
  while sleep "$RESTART_EVERY"; do
    event "restart: blue stopped"
    kill "$(cat "$TMP/blue/nginx.pid")" 2>/dev/null || true
    sleep 2
    nginx -p "$TMP/blue" -c "$TMP/blue/nginx.conf" >>"$TMP/blue/stdout.log" 2>&1 &
    event "restart: blue started"
  done
}

# ------------------------------------------------------------ sampling

# The proxy's state in the middle of a window, under load: RSS (KiB),
# open fds, threads, open client connections.
snapshot() {
  local pid=$CUTOVER_PID conns
  conns=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^cutover_connections_open/ {n += $2} END {printf "%d", n}')
  printf '%s %s %s %s\n' \
    "$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")" \
    "$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)" \
    "$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")" "$conns"
}

# One CSV row per window: the state in its middle, the client's and the
# server's view of the whole window, and the events in it.
sample() { # WRK_OUTPUT METRICS_BEFORE METRICS_AFTER START END SNAPSHOT
  local events rss fds threads conns
  read -r rss fds threads conns <"$6"
  events=$(awk -v a="$4" -v b="$5" '$1 >= a && $1 < b {$1=""; sub(/^ /,""); printf "%s;", $0}' "$TMP/events" 2>/dev/null)
  python3 "$ROOT/benches/soak_plot.py" row "$1" "$2" "$3" \
    "$(($5 - T0))" "$rss" "$fds" "$threads" "$conns" "${events%;}" >>"$CSV"
}

wrk_window() { # CONNS OUTPUT
  SOAK_DELAY_MS=$DELAY_MS wrk -t"$THREADS" -c"$1" -d${WINDOW}s --latency \
    -s "$TMP/rate.lua" "http://127.0.0.1:$HTTP_PORT/" >"$2" 2>&1 || true
}

# ------------------------------------------------------------ main

if [[ -z $CUTOVER_BIN ]]; then
  log "building cutover (cargo build --profile dist)"
  (cd "$ROOT" && cargo build --profile dist) >&2
  CUTOVER_BIN=$ROOT/target/dist/cutover
fi
mkdir -p "$OUT"
CSV=$OUT/soak.csv
HTTP_PORT=$(free_port) ADMIN_PORT=$(free_port) BLUE_PORT=$(free_port) GREEN_PORT=$(free_port)
start_backend blue "$BLUE_PORT"
start_backend green "$GREEN_PORT"
write_config 90 10
"$CUTOVER_BIN" run --config "$TMP/cutover.toml" >"$TMP/cutover.log" 2>&1 &
CUTOVER_PID=$!
BG_PIDS+=("$CUTOVER_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
wait_http "http://127.0.0.1:$HTTP_PORT/"
cat >"$TMP/rate.lua" <<'LUA'
local pause = tonumber(os.getenv("SOAK_DELAY_MS")) or 10
function delay() return pause end
LUA

log "capacity: wrk -t$THREADS -c$CONNS -d${CAPACITY_SECONDS}s"
wrk -t"$THREADS" -c"$CONNS" -d"${CAPACITY_SECONDS}s" "http://127.0.0.1:$HTTP_PORT/" >"$TMP/capacity.txt" 2>&1
CAPACITY=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$TMP/capacity.txt")
[[ -n $CAPACITY && $CAPACITY -gt 0 ]] || die "capacity run failed: $(cat "$TMP/capacity.txt")"
TARGET=$((CAPACITY * LOAD_PCT / 100))
LOAD_CONNS=$(((TARGET * DELAY_MS + 999) / 1000))
FIRST_CONNS=$LOAD_CONNS
log "capacity $CAPACITY req/s; holding $TARGET req/s ($LOAD_PCT %) with $LOAD_CONNS connections pausing ${DELAY_MS} ms"

echo "t_s,rss_kib,fds,threads,connections,rps,target_rps,client_p99_ms,server_p99_ms,errors,events" >"$CSV"
: >"$TMP/events"
rewriter &
BG_PIDS+=($!)
flapper &
BG_PIDS+=($!)
restarter &
BG_PIDS+=($!)

T0=$(date +%s)
END=$((T0 + SOAK_MINUTES * 60))
i=0
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/m.0"
start=$T0
while (($(date +%s) < END)); do
  wrk_window "$LOAD_CONNS" "$TMP/w.$i" &
  wrk_pid=$!
  sleep $((WINDOW / 2))
  snapshot >"$TMP/snapshot" || die "cutover stopped answering: $(tail -5 "$TMP/cutover.log")"
  wait "$wrk_pid" || true
  i=$((i + 1))
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/m.$i" || cp "$TMP/m.$((i - 1))" "$TMP/m.$i"
  kill -0 "$CUTOVER_PID" 2>/dev/null || die "cutover exited: $(tail -5 "$TMP/cutover.log")"
  # Windows tile the time, so each event lands in exactly one row.
  end=$(date +%s)
  TARGET_RPS=$TARGET sample "$TMP/w.$((i - 1))" "$TMP/m.$((i - 1))" "$TMP/m.$i" \
    "$start" "$end" "$TMP/snapshot"
  start=$end
  rm -f "$TMP/m.$((i - 1))"
  if ((i == 1)); then
    # One correction of the connection count from the rate reached.
    got=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$TMP/w.0")
    if [[ -n $got && $got -gt 0 ]]; then
      # At most 4x: on a saturated machine more connections only queue.
      LOAD_CONNS=$(((LOAD_CONNS * TARGET + got - 1) / got))
      ((LOAD_CONNS <= 4 * FIRST_CONNS)) || LOAD_CONNS=$((4 * FIRST_CONNS))
      log "window 1: $got req/s; now $LOAD_CONNS connections"
    fi
  fi
  tail -n 1 "$CSV" | sed 's/^/[soak] /' >&2
done
log "done: $i windows in $CSV"
python3 "$ROOT/benches/soak_plot.py" drift "$CSV" "$CAPACITY" "$TARGET" | tee "$OUT/drift.md"
if [[ -n $PLOT_PY ]]; then
  "$PLOT_PY" "$ROOT/benches/soak_plot.py" plot "$CSV" "$OUT/soak.png" && log "plot: $OUT/soak.png"
fi
