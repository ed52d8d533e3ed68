#!/usr/bin/env bash
# End-to-end benchmark: Cutover vs nginx vs HAProxy as reverse proxies.
# This is a measurement harness, not a test: it passes or fails nothing.
#
# Run from anywhere (it builds target/dist/cutover first: the release profile with fat LTO):
#   benches/e2e.sh                               # SCENARIO=basic
#   SCENARIO=large ROUNDS=5 DURATION=20s benches/e2e.sh
#
# Environment:
#   SCENARIO    basic (default) | sticky | routes | reload | idle | large |
#               instructions | h2 | tls | allocator | shadow | goals
#   ROUNDS      rounds per target, targets alternate A B C D each round (3)
#   DURATION    length of each wrk / h2load run (10s)
#   CONNS       concurrent connections (64)
#   THREADS     wrk / h2load threads (2)
#   H2_STREAMS  h2load concurrent streams per connection (1, so h2c keeps
#               the same number of requests in flight as wrk)
#   IDLE_CONNS  idle keep-alive connections for SCENARIO=idle (10000)
#   IDLE_PROTOS protocols of SCENARIO=idle ("h1 h2c")
#   IDLE_PEERS=0  SCENARIO=idle measures cutover alone (1: also nginx, HAProxy)
#   ROUTE_COUNTS  route-table sizes for SCENARIO=routes ("1 100 1000 10000")
#   INSTR_REQUESTS  requests counted by SCENARIO=instructions (20000)
#   INSTR_CONNS     connections h2load opens for SCENARIO=instructions (16)
#   KEEP_TMP=1  keep the temp dir (configs, logs, raw wrk/h2load output)
#   CUTOVER_BIN use this cutover binary instead of building one
#   CUTOVER_GLIBC_BIN  SCENARIO=allocator's glibc-malloc build (default: built
#               with --no-default-features into target/glibc)
#   ACCESS_LOG=1  run cutover with its access log on, JSON to a file in the
#               temp dir (default off, like nginx and haproxy here)
#   TLS_CLIENTS  openssl s_time clients of SCENARIO=tls's conn/req rows (2)
#   INSTR_TARGETS  proxies counted by SCENARIO=instructions
#               ("cutover nginx haproxy"; e.g. "cutover" alone)
#
# Needs wrk, h2load (nghttp2-client), nginx (nginx-light), haproxy, curl and
# python3; it installs nothing and says what to install when one is missing.
#
# Setup: one backend, a separate nginx (1 worker, access_log off) answering
# "ok\n" on / and a 1 MiB file on /large.bin, on a kernel-chosen free
# 127.0.0.1 port. In front of it, with equivalent settings
# (2 workers or threads, access logs off, HTTP/1.1 keep-alive to the backend,
# no per-connection request limit):
#   cutover   target/dist/cutover run --config $TMP/cutover.toml (90/10)
#   nginx     worker_processes 2; upstream keepalive 64; proxy_http_version 1.1
#   haproxy   nbthread 2; http-reuse always
# h2c (HTTP/2 with prior knowledge, measured with h2load in SCENARIO=basic):
# cutover on its one port; nginx 1.22 only on a separate `listen ... http2`
# port (it cannot serve HTTP/1.1 there), as the backend does for the direct
# row; haproxy on a second `bind ... proto h2`. A target that does not answer
# h2c (curl --http2-prior-knowledge) is shown as n/a.
# Every config, pid file and log lives in a mktemp -d dir; nginx and haproxy
# run in the foreground as jobs of this script with their own prefix and pid
# files (the system's /etc/nginx and default pid files are never used), and
# everything started here is killed on exit.
#
# Scenarios (each prints its own table):
#   basic   direct, cutover, nginx, haproxy on "/": HTTP/1.1 (wrk) and h2c
#   large   the same on /large.bin (1 MiB), plus MiB/s
#   sticky  cutover without / with sticky = { cookie = "cutover" }: new
#           clients (Set-Cookie on every reply) and clients sending the cookie
#   routes  cutover with ROUTE_COUNTS host routes (+ a catch-all), Host header
#           of the route in the middle of the table; then RSS per table size
#           at idle and after traffic to a few routes
#   reload  cutover while its config is rewritten 10x/s (temp file + mv,
#           90/10 <-> 10/90) vs. no rewrites; drop and errors
#   idle    RSS of cutover, nginx and haproxy before / with / after
#           IDLE_CONNS idle keep-alive connections (one GET each, then
#           silent; HTTP/1.1 and h2c; client benches/idle_client.py; raises
#           ulimit -n), and per connection
#   instructions  instructions per request of each proxy under callgrind
#           (1 worker each; needs valgrind): deterministic, for before/after
#   h2      HTTP/2 upstreams: h2load (h2c) through cutover (protocol = "h2c"),
#           nginx (grpc_pass) and haproxy (proto h2) to the backend's h2c port
#   tls     HTTPS (ECDSA P-256, made with openssl): keep-alive h1 (wrk) and
#           h2 by ALPN (h2load), and a new connection per request with a
#           full or a resumed handshake (openssl s_time), all three proxies
#   allocator  cutover built with jemalloc (default) vs glibc's malloc:
#           HTTP/1.1 and h2c, rounds alternating
#   shadow  cutover at 100/0 without a shadow and with shadow to green at
#           sample 0.1 and 1.0 (the copies' cost)
#   goals   issue 19's goals in one run: basic, instructions, tls and routes
#           one after another (same binary, same ROUNDS and DURATION), each
#           scenario's own table, then one table of goal, measured, met
#
# Output: ONE table, one row per target and protocol, with the median over
# rounds of req/s, p50 and p99 latency (wrk; h2load reports no percentiles,
# so h2c rows show its mean latency in the p50 column, marked "~"), errors
# (sum over rounds of responses with status >= 400 + socket errors incl.
# timeouts; for h2c, h2load's failed requests) and peak RSS. Then the ratios
# A / B for req/s and p99 (basic: Cutover / nginx, / HAProxy, / direct).
#
# Peak RSS: before each run the kernel's high-water mark is reset
# (echo 5 > /proc/PID/clear_refs); after it VmHWM is read from
# /proc/PID/status and summed over all of the target's processes: nginx =
# master + its 2 workers, haproxy = its one process (2 threads), cutover =
# its one process. Shared pages (libc, the binary) count once per process,
# so nginx's sum is an upper bound. The direct row has no proxy, so no RSS.
set -euo pipefail

SCENARIO=${SCENARIO:-basic}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
H2_STREAMS=${H2_STREAMS:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_PROTOS=${IDLE_PROTOS:-h1 h2c}
IDLE_PEERS=${IDLE_PEERS:-1}
ROUTE_COUNTS=${ROUTE_COUNTS:-1 100 1000 10000}
KEEP_TMP=${KEEP_TMP:-0}
INSTR_REQUESTS=${INSTR_REQUESTS:-20000}
INSTR_CONNS=${INSTR_CONNS:-16}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CUTOVER_BIN=${CUTOVER_BIN:-}
TMP=$(mktemp -d /tmp/cutover-e2e.XXXXXX)
chmod 755 "$TMP"             # nginx workers (www-data) read the backend's files
RESULTS="$TMP/results.tsv"   # target proto round rps p50 p99 errors MiB/s rss_kb cpu_us
NA_FILE="$TMP/na.tsv"        # target proto: rows that could not be measured
BG_PIDS=()                   # every background process this script started
LAST_PID=""                  # set by start_bg
PROXY_WORKERS=2              # workers / threads of each proxy (instructions: 1)
NGINX_EXTRA=""               # more nginx main-context directives
LAUNCH=()                    # a command the proxies run under (instructions: valgrind)
PEAK_NOTE="VmHWM reset before each run"
HAPROXY_MAXCONN=4096         # the proxies' connection limits and client
NGINX_CONNS=16384            # timeouts (raised by SCENARIO=idle)
HAPROXY_TIMEOUT=120s
NGINX_KEEPALIVE=120s
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- plumbing

# On exit: TERM everything this script started, KILL what is left after 5 s.
any_alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
cleanup() {
  local pid i
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    any_alive "${BG_PIDS[@]}" || break
    sleep 0.1
  done
  for pid in "${BG_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E   # say where an unexpected failure happened before set -e exits
trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR

# Every tool is checked up front; nothing is installed behind your back.
check_tools() {
  local -A pkg=([wrk]=wrk [h2load]=nghttp2-client [nginx]=nginx-light
    [haproxy]=haproxy [curl]=curl [python3]=python3 [cargo]=cargo)
  local missing=() pkgs=() tool
  for tool in wrk h2load nginx haproxy curl python3 cargo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      missing+=("$tool")
      [[ $tool == cargo ]] || pkgs+=("${pkg[$tool]}")
    fi
  done
  if ((${#missing[@]})); then
    log "missing tools: ${missing[*]}"
    ((${#pkgs[@]})) && log "install with: apt-get install -y ${pkgs[*]}"
    [[ " ${missing[*]} " == *" cargo "* ]] && log "cargo: install a Rust toolchain (rustup)"
    exit 1
  fi
}

# A free 127.0.0.1 TCP port, chosen by the kernel.
free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# start_bg LOGFILE CMD...: run CMD as a background job, remember its pid.
start_bg() {
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  LAST_PID=$!
  BG_PIDS+=("$LAST_PID")
}

# wait_http URL PID LOGFILE: wait (30 s at most) until URL answers 2xx.
wait_http() {
  local url=$1 pid=$2 logfile=$3 i
  for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$logfile" >&2 || true
      die "process $pid exited before $url answered (log: $logfile)"
    fi
    sleep 0.1
  done
  tail -n 20 "$logfile" >&2 || true
  die "$url did not answer within 30 s (log: $logfile)"
}

# speaks_h2c URL: does URL answer HTTP/2 with prior knowledge?
speaks_h2c() {
  [[ $(curl -sS -o /dev/null -w '%{http_version}' --http2-prior-knowledge "$1" 2>/dev/null) == 2 ]]
}

# ---------------------------------------------------------------- build

build_cutover() {
  if [[ -z $CUTOVER_BIN ]]; then
    log "building cutover (cargo build --profile dist)"
    (cd "$ROOT" && cargo build --profile dist) >&2
    CUTOVER_BIN="$ROOT/target/dist/cutover"
  fi
  [[ -x $CUTOVER_BIN ]] || die "no cutover binary at $CUTOVER_BIN"
}

# ---------------------------------------------------------------- servers

# The backend: its own nginx, 1 worker, "ok\n" on / and 1 MiB on /large.bin.
start_backend() {
  BACKEND_PORT=$(free_port)
  BACKEND_H2_PORT=$(free_port)
  local dir="$TMP/backend"
  mkdir -p "$dir/www" "$dir/temp"
  head -c 1048576 /dev/urandom >"$dir/www/large.bin"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path $dir/temp;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    listen 127.0.0.1:$BACKEND_H2_PORT http2;
    root $dir/www;
    location = / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
  start_bg "$dir/stderr.log" nginx -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf"
  BACKEND_PID=$LAST_PID
  wait_http "http://127.0.0.1:$BACKEND_PORT/" "$BACKEND_PID" "$dir/error.log"
  log "backend nginx pid $BACKEND_PID on :$BACKEND_PORT (h2c :$BACKEND_H2_PORT)"
}

# nginx as the proxy: 2 workers, upstream keep-alive over HTTP/1.1.
start_nginx_proxy() {
  NGINX_PORT=$(free_port)
  NGINX_H2_PORT=$(free_port)
  local dir="$TMP/nginx"
  mkdir -p "$dir/temp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $PROXY_WORKERS;
$NGINX_EXTRA
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NGINX_CONNS;
events { worker_connections $NGINX_CONNS; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout $NGINX_KEEPALIVE;
  client_body_temp_path $dir/temp/body;
  proxy_temp_path $dir/temp/proxy;
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    listen 127.0.0.1:$NGINX_H2_PORT http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  start_bg "$dir/stderr.log" "${LAUNCH[@]}" nginx -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf"
  NGINX_PID=$LAST_PID
  wait_http "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID" "$dir/error.log"
  log "nginx proxy pid $NGINX_PID on :$NGINX_PORT (h2c :$NGINX_H2_PORT)"
}

# HAProxy as the proxy: 2 threads, server connections reused across clients.
start_haproxy() {
  HAPROXY_PORT=$(free_port)
  HAPROXY_H2_PORT=$(free_port)
  local dir="$TMP/haproxy"
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread $PROXY_WORKERS
  maxconn $HAPROXY_MAXCONN
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client $HAPROXY_TIMEOUT
  timeout server $HAPROXY_TIMEOUT
  timeout http-keep-alive $HAPROXY_TIMEOUT
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  bind 127.0.0.1:$HAPROXY_H2_PORT proto h2
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
EOF
  haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy rejected $dir/haproxy.cfg"
  # -db: stay in the foreground, one process; -p: our own pid file.
  start_bg "$dir/haproxy.log" "${LAUNCH[@]}" haproxy -db -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg"
  HAPROXY_PID=$LAST_PID
  wait_http "http://127.0.0.1:$HAPROXY_PORT/" "$HAPROXY_PID" "$dir/haproxy.log"
  log "haproxy pid $HAPROXY_PID on :$HAPROXY_PORT (h2c :$HAPROXY_H2_PORT)"
}

# write_cutover_config FILE PORT ADMIN_PORT [ROUTE_TOML]: the bench config.
# ROUTE_TOML (default: one catch-all route "app" at 90/10) replaces [[routes]].
write_cutover_config() {
  local file=$1 port=$2 admin=$3
  local routes=${4:-$'[[routes]]\nname = "app"\nweights = { blue = 90, green = 10 }'}
  cat >"$file" <<EOF
[server]
workers = $PROXY_WORKERS
[listen]
http = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$admin"
[backends.blue]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
[backends.green]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
$routes
EOF
  if [[ ${ACCESS_LOG:-0} == 1 ]]; then
    printf '[access_log]\npath = "%s"\n' "$(dirname "$file")/access.log" >>"$file"
  fi
}

# start_cutover NAME [ROUTE_TOML]: start one cutover instance; sets
# CUTOVER_PID, CUTOVER_PORT, CUTOVER_ADMIN and CUTOVER_CONFIG.
start_cutover() {
  local name=$1 routes=${2:-}
  local dir="$TMP/$name"
  mkdir -p "$dir"
  CUTOVER_PORT=$(free_port)
  CUTOVER_ADMIN=$(free_port)
  CUTOVER_CONFIG="$dir/cutover.toml"
  write_cutover_config "$CUTOVER_CONFIG" "$CUTOVER_PORT" "$CUTOVER_ADMIN" "$routes"
  "$CUTOVER_BIN" check --config "$CUTOVER_CONFIG" >"$dir/check.log" 2>&1 ||
    { cat "$dir/check.log" >&2; die "cutover check rejected $CUTOVER_CONFIG"; }
  start_bg "$dir/cutover.log" "${LAUNCH[@]}" "$CUTOVER_BIN" run --config "$CUTOVER_CONFIG"
  CUTOVER_PID=$LAST_PID
  wait_http "http://127.0.0.1:$CUTOVER_PORT/" "$CUTOVER_PID" "$dir/cutover.log"
  log "$name pid $CUTOVER_PID on :$CUTOVER_PORT (admin :$CUTOVER_ADMIN)"
}

# ---------------------------------------------------------------- memory

# proc_tree PID: PID and its direct children (nginx master + workers).
proc_tree() {
  echo "$1"
  pgrep -P "$1" || true
}

# reset_peak PID...: reset each process's VmHWM to its current RSS.
reset_peak() {
  local pid
  for pid in "$@"; do
    if ! { echo 5 >"/proc/$pid/clear_refs"; } 2>/dev/null; then
      PEAK_NOTE="VmHWM could not be reset: peak since process start"
    fi
  done
}

# sum_proc FILE AWK PID...: AWK's number from /proc/PID/FILE, summed over PIDs
# (0 for a process that is gone).
sum_proc() {
  local file=$1 prog=$2 pid total=0 n
  shift 2
  for pid in "$@"; do
    n=$(awk "$prog" "/proc/$pid/$file" 2>/dev/null || echo 0)
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

# peak_rss_kb PID...: sum of VmHWM (kB) over the processes.
peak_rss_kb() { sum_proc status '/^VmHWM:/ {print $2}' "$@"; }

# cpu_ticks PID...: user + system CPU time (clock ticks) summed over PIDs.
cpu_ticks() { sum_proc stat '{print $14 + $15}' "$@"; }

# seconds DURATION: wrk's duration ("10s", "2m") in seconds.
seconds() {
  case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

# rss_kb PID: current VmRSS (kB).
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- load

# Parse wrk --latency output: "rps p50_ms p99_ms errors MiB/s".
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    function mib(v) {
      if (v ~ /GB$/) return v * 1024
      if (v ~ /MB$/) return v + 0
      if (v ~ /KB$/) return v / 1024
      return v / 1048576
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    $1 == "Requests/sec:" { rps = $2 }
    $1 == "Transfer/sec:" { bw = mib($2) }
    END { printf "%.2f %.3f %.3f %d %.2f\n", rps, p50, p99, err, bw }
  ' "$1"
}

# Parse h2load output: "rps mean_ms - errors MiB/s" (no percentiles).
parse_h2load() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /s$/) return v * 1000
      return v + 0
    }
    function mib(v) {
      sub(/\/s$/, "", v)
      if (v ~ /GB$/) return v * 1024
      if (v ~ /MB$/) return v + 0
      if (v ~ /KB$/) return v / 1024
      return v / 1048576
    }
    $1 == "finished" { rps = $4; bw = mib($6) }
    $1 == "requests:" { err = $10 }
    /^time for request:/ { mean = ms($6) }
    END { printf "%.2f %.3f - %d %.2f\n", rps, mean, err, bw }
  ' "$1"
}

# bench NAME PROTO ROUND URL PIDS [WRK_ARGS...]: one wrk (h1) or h2load (h2c)
# run; appends a line to $RESULTS. PIDS is a space-separated list or "-".
bench() {
  local name=$1 proto=$2 round=$3 url=$4 pids=$5
  shift 5
  local out="$TMP/raw/${name//[^A-Za-z0-9=._-]/_}.$proto.$round.txt" stats rss=- cpu=- cpu0=0
  local -a pid_list=()
  mkdir -p "$TMP/raw"
  [[ $pids == - ]] || read -r -a pid_list <<<"$pids"
  if ((${#pid_list[@]})); then
    reset_peak "${pid_list[@]}"
    cpu0=$(cpu_ticks "${pid_list[@]}")
  fi
  if [[ $proto == h1 ]]; then
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1 || true
    stats=$(parse_wrk "$out")
  else
    h2load -t"$THREADS" -c"$CONNS" -m"$H2_STREAMS" -D"$DURATION" "$@" "$url" >"$out" 2>&1 || true
    stats=$(parse_h2load "$out")
  fi
  if ((${#pid_list[@]})); then
    kill -0 "${pid_list[0]}" 2>/dev/null || die "$name (pid ${pid_list[0]}) died during the run"
    rss=$(peak_rss_kb "${pid_list[@]}")
    # CPU microseconds per request: the proxy's own cost, whatever the
    # load generator and the backend took from the same cores.
    cpu=$(awk -v t="$(($(cpu_ticks "${pid_list[@]}") - cpu0))" -v hz="$CLK_TCK" \
      -v rps="${stats%% *}" -v secs="$(seconds "$DURATION")" \
      'BEGIN { n = rps * secs; if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "-" }')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$proto" "$round" "${stats// /$'\t'}" "$rss" "$cpu" >>"$RESULTS"
  log "round $round $name $proto: $stats rss_kb=$rss cpu_us_per_req=$cpu"
}

# ---------------------------------------------------------------- report

# summarize TITLE RATIO...: the table (medians over rounds, errors summed)
# and the ratios. Each RATIO is "A|B": row A over row B, per protocol.
# Targets listed in $NA_FILE ("name proto" lines) are shown as n/a.
summarize() {
  local title=$1
  shift
  python3 - "$RESULTS" "$NA_FILE" "$title" "$PEAK_NOTE" "$SCENARIO" "$@" <<'PY'
import sys
from collections import OrderedDict
from statistics import median

path, na_path, title, peak_note, scenario, *ratios = sys.argv[1:]
rows = OrderedDict()
for line in open(path):
    name, proto, _round, rps, p50, p99, err, mib, rss, cpu = line.rstrip("\n").split("\t")
    r = rows.setdefault((name, proto), {"rps": [], "p50": [], "p99": [], "err": 0, "mib": [], "rss": [], "cpu": []})
    r["rps"].append(float(rps))
    r["p50"].append(float(p50))
    if p99 != "-":
        r["p99"].append(float(p99))
    r["err"] += int(err)
    r["mib"].append(float(mib))
    if rss != "-":
        r["rss"].append(int(rss))
    if cpu != "-":
        r["cpu"].append(float(cpu))
# Show h1 rows first, then h2c rows, each in the order the targets ran.
keys = sorted(rows, key=lambda k: (k[1] != "h1", list(rows).index(k)))
med = {k: {f: (median(v[f]) if v[f] else None) for f in ("rps", "p50", "p99", "mib", "rss", "cpu")} for k, v in rows.items()}

show_mib = scenario == "large"
W = max([len("ratio (A / B)")] + [len(k[0]) for k in rows] + [len(r.replace("|", " / ")) for r in ratios])
head = f"{'target':<{W}} {'proto':<5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'peak RSS':>9} {'CPU us/req':>10}"
if show_mib:
    head += f" {'MiB/s':>8}"
print()
print(title)
print(head)
print("-" * len(head))
for k in keys:
    m, r = med[k], rows[k]
    p50 = f"{m['p50']:.3f}" if k[1] == "h1" else f"~{m['p50']:.3f}"
    p99 = f"{m['p99']:.3f}" if m["p99"] is not None else "n/a"
    rss = f"{m['rss'] / 1024:.1f}M" if m["rss"] is not None else "-"
    cpu = f"{m['cpu']:.2f}" if m["cpu"] is not None else "-"
    line = f"{k[0]:<{W}} {k[1]:<5} {m['rps']:>10.0f} {p50:>8} {p99:>8} {r['err']:>7} {rss:>9} {cpu:>10}"
    if show_mib:
        line += f" {m['mib']:>8.1f}"
    print(line)
for line in open(na_path):
    name, proto = line.rstrip("\n").split("\t")
    print(f"{name:<{W}} {proto:<5} {'n/a':>10}   (does not speak {proto})")

if ratios:
    print()
    print(f"{'ratio (A / B)':<{W}} {'proto':<5} {'req/s':>10} {'p99':>8} {'CPU/req':>8}" + (f" {'MiB/s':>8}" if show_mib else ""))
    for ratio in ratios:
        a, b = ratio.split("|")
        for proto in ("h1", "h2c"):
            if (a, proto) not in med or (b, proto) not in med:
                continue
            ma, mb = med[(a, proto)], med[(b, proto)]
            rps = f"{ma['rps'] / mb['rps']:.3f}" if mb["rps"] else "n/a"
            p99 = f"{ma['p99'] / mb['p99']:.3f}" if ma["p99"] and mb["p99"] else "n/a"
            cpu = f"{ma['cpu'] / mb['cpu']:.3f}" if ma["cpu"] and mb["cpu"] else "n/a"
            line = f"{a + ' / ' + b:<{W}} {proto:<5} {rps:>10} {p99:>8} {cpu:>8}"
            if show_mib:
                line += f" {ma['mib'] / mb['mib']:>8.3f}" if mb["mib"] else f" {'n/a':>8}"
            print(line)
print()
print(f"medians over rounds; errors summed over rounds; peak RSS = sum of VmHWM over the target's processes ({peak_note});")
print("CPU us/req = user + system CPU of the target's processes during the run / requests answered.")
if any(k[1] == "h2c" for k in rows):
    print("h2c rows: h2load gives no percentiles, p50 column shows its mean (~); p99 ratios are h1 only.")
PY
}

# run_matrix SPEC...: ROUNDS rounds over the targets, alternating them.
# SPEC is "name|proto|url|pids|extra wrk/h2load args" (fields may be empty;
# the extra args are split on spaces and are also valid curl args: -H X:Y).
run_matrix() {
  local round spec name proto url pids extra
  local -a extra_args h2
  # Preflight: every target must answer 2xx before anything is measured.
  for spec in "$@"; do
    IFS='|' read -r name proto url pids extra <<<"$spec"
    extra_args=()
    [[ -n $extra ]] && read -r -a extra_args <<<"$extra"
    h2=()
    [[ $proto == h2c ]] && h2=(--http2-prior-knowledge)
    curl -fsS -o /dev/null "${h2[@]}" "${extra_args[@]}" "$url" ||
      die "$name ($proto) does not answer 2xx on $url"
  done
  for ((round = 1; round <= ROUNDS; round++)); do
    for spec in "$@"; do
      IFS='|' read -r name proto url pids extra <<<"$spec"
      extra_args=()
      [[ -n $extra ]] && read -r -a extra_args <<<"$extra"
      bench "$name" "$proto" "$round" "$url" "${pids:--}" "${extra_args[@]}"
    done
  done
}

# ---------------------------------------------------------------- scenarios

# The three proxies and the direct backend, HTTP/1.1 and (where spoken) h2c.
scenario_basic() {
  local path=${1:-/}
  start_cutover cutover
  start_nginx_proxy
  start_haproxy
  local nginx_pids haproxy_pids
  nginx_pids=$(proc_tree "$NGINX_PID" | tr '\n' ' ')
  haproxy_pids=$(proc_tree "$HAPROXY_PID" | tr '\n' ' ')
  local -a specs=(
    "direct|h1|http://127.0.0.1:$BACKEND_PORT$path|-|"
    "cutover|h1|http://127.0.0.1:$CUTOVER_PORT$path|$CUTOVER_PID|"
    "nginx|h1|http://127.0.0.1:$NGINX_PORT$path|$nginx_pids|"
    "haproxy|h1|http://127.0.0.1:$HAPROXY_PORT$path|$haproxy_pids|"
  )
  if [[ $SCENARIO == basic ]]; then
    local target name url pids
    for target in "direct|http://127.0.0.1:$BACKEND_H2_PORT$path|-" \
      "cutover|http://127.0.0.1:$CUTOVER_PORT$path|$CUTOVER_PID" \
      "nginx|http://127.0.0.1:$NGINX_H2_PORT$path|$nginx_pids" \
      "haproxy|http://127.0.0.1:$HAPROXY_H2_PORT$path|$haproxy_pids"; do
      IFS='|' read -r name url pids <<<"$target"
      if speaks_h2c "$url"; then
        specs+=("$name|h2c|$url|$pids|")
      else
        log "$name does not speak h2c with prior knowledge on $url: n/a"
        printf '%s\th2c\n' "$name" >>"$NA_FILE"
      fi
    done
  fi
  run_matrix "${specs[@]}"
  summarize "scenario $SCENARIO: $ROUNDS rounds x $DURATION, $CONNS connections, $THREADS threads (h2c: $H2_STREAMS stream/conn)" \
    "cutover|nginx" "cutover|haproxy" "cutover|direct"
}

# Sticky sessions: a first visit (no cookie, Set-Cookie each time) and a
# returning client (sends the cookie it was given), vs plain cutover.
scenario_sticky() {
  start_cutover cutover
  local plain_port=$CUTOVER_PORT plain_pid=$CUTOVER_PID
  start_cutover cutover-sticky $'[[routes]]\nname = "app"\nweights = { blue = 90, green = 10 }\nsticky = { cookie = "cutover" }'
  local url="http://127.0.0.1:$CUTOVER_PORT/" cookie
  cookie=$(curl -fsS -o /dev/null -D - "$url" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "set-cookie" && $2 ~ /^cutover=/ { split($2, a, ";"); print a[1]; exit }')
  [[ -n $cookie ]] || die "sticky route sent no cutover= Set-Cookie"
  log "sticky cookie: $cookie"
  run_matrix \
    "direct|h1|http://127.0.0.1:$BACKEND_PORT/|-|" \
    "cutover|h1|http://127.0.0.1:$plain_port/|$plain_pid|" \
    "cutover sticky, new client|h1|$url|$CUTOVER_PID|" \
    "cutover sticky, cookie sent|h1|$url|$CUTOVER_PID|-H Cookie:$cookie"
  summarize "scenario sticky: 90/10 with sticky = { cookie = \"cutover\" }, $ROUNDS rounds x $DURATION, $CONNS connections" \
    "cutover sticky, new client|cutover" "cutover sticky, cookie sent|cutover" "cutover|direct"
}

# Route-table size: N host routes plus a catch-all; the request hits the
# host route in the middle of the table.
scenario_routes() {
  local n i routes file specs=("direct|h1|http://127.0.0.1:$BACKEND_PORT/|-|") ratios=()
  local -A pid_of port_of idle_kb
  for n in $ROUTE_COUNTS; do
    file="$TMP/routes-$n.toml"
    for ((i = 1; i <= n; i++)); do
      printf '[[routes]]\nname = "r%d"\nhost = "h%d.example.com"\nweights = { blue = 90, green = 10 }\n' "$i" "$i"
    done >"$file"
    printf '[[routes]]\nname = "catch-all"\nweights = { blue = 90, green = 10 }\n' >>"$file"
    routes=$(<"$file")
    start_cutover "cutover-routes-$n" "$routes"
    pid_of[$n]=$CUTOVER_PID
    port_of[$n]=$CUTOVER_PORT
    # One wrk argument: a space would split it in run_matrix.
    specs+=("routes=$n|h1|http://127.0.0.1:$CUTOVER_PORT/|$CUTOVER_PID|-H Host:h$(((n + 1) / 2)).example.com")
    [[ $n == "${ROUTE_COUNTS%% *}" ]] || ratios+=("routes=$n|routes=${ROUTE_COUNTS%% *}")
  done
  # Idle RSS: a few analysis ticks (once a second) after the last start.
  sleep 3
  for n in $ROUTE_COUNTS; do idle_kb[$n]=$(rss_kb "${pid_of[$n]}"); done
  run_matrix "${specs[@]}"
  summarize "scenario routes: N host routes + catch-all, Host = route N/2, $ROUNDS rounds x $DURATION, $CONNS connections" \
    "${ratios[@]}"
  # After traffic: wrk hit route N/2; three more routes get a request each.
  for n in $ROUTE_COUNTS; do
    for i in 1 $(((n + 3) / 4)) "$n"; do
      curl -fsS -o /dev/null -H "Host: h$i.example.com" "http://127.0.0.1:${port_of[$n]}/" || true
    done
  done
  sleep 2
  echo "RSS by table size (VmRSS of the cutover process, 2 workers):"
  printf '%-8s %12s %16s %16s\n' routes "idle" "after traffic" "idle per route"
  local first=${ROUTE_COUNTS%% *} after per
  for n in $ROUTE_COUNTS; do
    after=$(rss_kb "${pid_of[$n]}")
    per=-
    ((n > first)) && per=$(awk -v a="${idle_kb[$n]}" -v b="${idle_kb[$first]}" -v n="$n" -v f="$first" \
      'BEGIN { printf "%.2f KiB", (a - b) / (n - f) }')
    printf '%-8s %12s %16s %16s\n' "$n" "$(awk -v k="${idle_kb[$n]}" 'BEGIN { printf "%.1f MiB", k / 1024 }')" \
      "$(awk -v k="$after" 'BEGIN { printf "%.1f MiB", k / 1024 }')" "$per"
  done
  echo "idle = 3 s after start; after traffic = after the wrk runs on route N/2 and one request each to routes 1, N/4 and N."
}

# reload_writer FILE PORT ADMIN: rewrite FILE 10 times a second, alternating
# 90/10 and 10/90, by write-to-temp + mv (atomic replace). Counts in FILE.count.
reload_writer() {
  local file=$1 port=$2 admin=$3 i=0 routes
  while :; do
    if ((i % 2)); then
      routes=$'[[routes]]\nname = "app"\nweights = { blue = 10, green = 90 }'
    else
      routes=$'[[routes]]\nname = "app"\nweights = { blue = 90, green = 10 }'
    fi
    write_cutover_config "$file.tmp" "$port" "$admin" "$routes"
    mv -f "$file.tmp" "$file"
    echo >>"$file.count"
    i=$((i + 1))
    sleep 0.1
  done
}

# Config reloads under load: the same cutover with and without a rewrite of
# its config file 10 times a second.
scenario_reload() {
  start_cutover cutover
  local url="http://127.0.0.1:$CUTOVER_PORT/" round writer rewrites=0
  for ((round = 1; round <= ROUNDS; round++)); do
    bench "no reload" h1 "$round" "$url" "$CUTOVER_PID"
    : >"$CUTOVER_CONFIG.count"
    reload_writer "$CUTOVER_CONFIG" "$CUTOVER_PORT" "$CUTOVER_ADMIN" &
    writer=$!
    BG_PIDS+=("$writer")
    bench "reload 10/s" h1 "$round" "$url" "$CUTOVER_PID"
    kill "$writer"
    wait "$writer" 2>/dev/null || true
    rewrites=$((rewrites + $(wc -l <"$CUTOVER_CONFIG.count")))
  done
  summarize "scenario reload: config rewritten 10x/s (90/10 <-> 10/90, temp + mv), $ROUNDS rounds x $DURATION, $CONNS connections" \
    "reload 10/s|no reload"
  echo "config file rewrites during the reload runs: $rewrites in all"
  echo "cutover reload metrics (admin /metrics, lines matching 'reload'):"
  curl -fsS "http://127.0.0.1:$CUTOVER_ADMIN/metrics" 2>/dev/null | grep -i reload | grep -v '^#' ||
    echo "  (admin /metrics unreachable or no reload metric)"
}

# rss_tree_kb PID: VmRSS (kB) summed over PID and its direct children.
rss_tree_kb() {
  local pids
  pids=$(proc_tree "$1" | tr '\n' ' ')
  # shellcheck disable=SC2086
  sum_proc status '/^VmRSS:/ {print $2}' $pids
}

# idle_round NAME PROTO PORT PID: RSS of PID's process tree before, with
# IDLE_CONNS idle keep-alive connections (one GET each, then silent), and
# 2 s after the client closed them; appends a row to $TMP/idle.tsv.
idle_round() {
  local name=$1 proto=$2 port=$3 pid=$4 ready="$TMP/idle.$1.$2.ready" client i
  local before during after ok held secs
  sleep 1
  before=$(rss_tree_kb "$pid")
  start_bg "$TMP/idle.$name.$proto.log" python3 "$ROOT/benches/idle_client.py" \
    127.0.0.1 "$port" "$IDLE_CONNS" "$proto" "$ready"
  client=$LAST_PID
  for ((i = 0; i < 1200; i++)); do
    [[ -s $ready ]] && break
    kill -0 "$client" 2>/dev/null || { cat "$TMP/idle.$name.$proto.log" >&2; die "idle client died"; }
    sleep 0.1
  done
  [[ -s $ready ]] || die "$name $proto: the idle client did not open its connections in 120 s"
  # Idle for 3 s: cutover gives up an idle HTTP/1 connection's hyper state
  # within two ticks of its deadline watch (1.25 s each here).
  sleep 3
  during=$(rss_tree_kb "$pid")
  read -r ok held secs <"$ready" || true
  rm -f "$ready" # the client closes its connections and exits
  wait "$client" 2>/dev/null || true
  sleep 2
  after=$(rss_tree_kb "$pid")
  log "$name $proto: $ok/$IDLE_CONNS answered, $held held ($secs s); RSS $before -> $during -> $after kB"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$proto" "$ok" "$held" "$before" "$during" "$after" >>"$TMP/idle.tsv"
}

# Idle keep-alive connections: the RSS each proxy's processes gain per
# idle connection (HTTP/1.1 and h2c), and what they give back when the
# connections close. Each proxy is started fresh for each protocol.
scenario_idle() {
  local want=$((IDLE_CONNS + 1024)) proto
  if (($(ulimit -n) < want)); then
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  fi
  # A proxy holds two descriptors per connection at most (cutover serves
  # (limit - 256) / 2 of them): beyond what the limit holds, fewer connections.
  local fits=$((($(ulimit -n) - 256) / 2 - 64))
  if ((IDLE_CONNS > fits)); then
    log "ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)): $fits idle connections, not $IDLE_CONNS"
    IDLE_CONNS=$fits
    want=$((IDLE_CONNS + 1024))
  fi
  # Every connection stays open for the whole scenario: timeouts of 600 s,
  # and connection limits above IDLE_CONNS.
  HAPROXY_MAXCONN=$((IDLE_CONNS + 64))
  NGINX_CONNS=$want
  HAPROXY_TIMEOUT=600s
  NGINX_KEEPALIVE=600s
  : >"$TMP/idle.tsv"
  for proto in $IDLE_PROTOS; do
    start_cutover "cutover-$proto" $'[[routes]]\nname = "app"\nweights = { blue = 90, green = 10 }\n[timeouts]\nidle = "600s"\nheader_read = "600s"'
    idle_round cutover "$proto" "$CUTOVER_PORT" "$CUTOVER_PID"
    kill "$CUTOVER_PID"
    [[ $IDLE_PEERS == 1 ]] || continue
    start_nginx_proxy
    idle_round nginx "$proto" "$([[ $proto == h1 ]] && echo "$NGINX_PORT" || echo "$NGINX_H2_PORT")" "$NGINX_PID"
    kill "$NGINX_PID"
    start_haproxy
    idle_round haproxy "$proto" "$([[ $proto == h1 ]] && echo "$HAPROXY_PORT" || echo "$HAPROXY_H2_PORT")" "$HAPROXY_PID"
    kill "$HAPROXY_PID"
  done
  echo
  echo "scenario idle: $IDLE_CONNS keep-alive connections per proxy and protocol, one GET / each, then idle"
  python3 - "$TMP/idle.tsv" <<'PY'
import sys
print(f"{'target':<8} {'proto':<5} {'2xx':>7} {'held':>7} {'RSS before':>11} {'with idle':>10} {'after close':>11} {'per conn':>9}")
for line in open(sys.argv[1]):
    name, proto, ok, held, before, during, after = line.split()
    ok, held, before, during, after = map(int, (ok, held, before, during, after))
    per = f"{(during - before) / held:.2f} KiB" if held else "n/a"
    mib = lambda kb: f"{kb / 1024:.1f} MiB"
    print(f"{name:<8} {proto:<5} {ok:>7} {held:>7} {mib(before):>11} {mib(during):>10} {mib(after):>11} {per:>9}")
print()
print("RSS = sum of VmRSS over the proxy's processes (nginx: master + 2 workers; haproxy: 1 process,")
print("2 threads; cutover: 1 process, 2 workers); per conn = (with idle - before) / held;")
print("after close = 2 s after the client closed every connection (memory given back?).")
PY
}

# Large bodies: 1 MiB from the backend through each proxy, MiB/s.
scenario_large() {
  scenario_basic /large.bin
}

# Instructions per request, counted by callgrind: each proxy with one worker
# (nginx: master_process off) runs under valgrind while h2load sends
# INSTR_REQUESTS requests over HTTP/1.1 on INSTR_CONNS connections (16; more
# make a worker serve them in larger batches). A first run of
# INSTR_REQUESTS/10 requests is subtracted, which leaves out start-up and
# shutdown. Unlike req/s this does not depend on what else the two cores
# do: a change to the request path shows up here to the instruction.
scenario_instructions() {
  command -v valgrind >/dev/null ||
    die "missing tool: valgrind (install with: apt-get install -y valgrind)"
  PROXY_WORKERS=1
  NGINX_EXTRA="master_process off;"
  local small=$((INSTR_REQUESTS / 10)) target n out pid port
  local -A total
  local targets=${INSTR_TARGETS:-cutover nginx haproxy}
  for target in $targets; do
    for n in "$small" "$((small + INSTR_REQUESTS))"; do
      out="$TMP/callgrind.$target.$n"
      LAUNCH=(valgrind --tool=callgrind "--callgrind-out-file=$out")
      case $target in
        cutover) start_cutover cutover; pid=$CUTOVER_PID port=$CUTOVER_PORT ;;
        nginx) start_nginx_proxy; pid=$NGINX_PID port=$NGINX_PORT ;;
        haproxy) start_haproxy; pid=$HAPROXY_PID port=$HAPROXY_PORT ;;
      esac
      h2load --h1 -n "$n" -c "$INSTR_CONNS" -t 1 "http://127.0.0.1:$port/" >"$out.h2load" 2>&1
      grep -q "$n succeeded" "$out.h2load" || die "$target: not all of $n requests succeeded ($out.h2load)"
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      total[$target.$n]=$(awk '/^summary:/ {print $2}' "$out")
      log "$target, $n requests: ${total[$target.$n]} instructions"
    done
  done
  printf '\nscenario instructions: instructions per proxied request (callgrind, 1 worker, %d requests, %d connections)\n' "$INSTR_REQUESTS" "$INSTR_CONNS"
  printf '%-10s %12s %10s\n' target instr/req "/ nginx"
  local per nginx_per=
  [[ -n ${total[nginx.$small]:-} ]] &&
    nginx_per=$(((total[nginx.$((small + INSTR_REQUESTS))] - total[nginx.$small]) / INSTR_REQUESTS))
  for target in $targets; do
    per=$(((total[$target.$((small + INSTR_REQUESTS))] - total[$target.$small]) / INSTR_REQUESTS))
    if [[ -n $nginx_per ]]; then
      printf '%-10s %12d %10.3f\n' "$target" "$per" "$(echo "$per / $nginx_per" | bc -l)"
    else
      printf '%-10s %12d %10s\n' "$target" "$per" n/a
    fi
  done
}

# The allocator: the same cutover built with jemalloc (the default) and with
# glibc's malloc (cargo build --profile dist --no-default-features; or
# CUTOVER_GLIBC_BIN), rounds alternating, HTTP/1.1 and h2c. Idle memory is
# SCENARIO=idle's; this is the throughput and p99 side of the choice.
scenario_allocator() {
  local jemalloc_bin=$CUTOVER_BIN glibc_bin=${CUTOVER_GLIBC_BIN:-}
  if [[ -z $glibc_bin ]]; then
    log "building cutover with glibc's malloc (--no-default-features)"
    (cd "$ROOT" && cargo build --profile dist --no-default-features --target-dir target/glibc) >&2
    glibc_bin="$ROOT/target/glibc/dist/cutover"
  fi
  [[ -x $glibc_bin ]] || die "no glibc cutover binary at $glibc_bin"
  CUTOVER_BIN=$glibc_bin start_cutover cutover-glibc
  local glibc_port=$CUTOVER_PORT glibc_pid=$CUTOVER_PID
  CUTOVER_BIN=$jemalloc_bin start_cutover cutover-jemalloc
  run_matrix \
    "direct|h1|http://127.0.0.1:$BACKEND_PORT/|-|" \
    "cutover glibc|h1|http://127.0.0.1:$glibc_port/|$glibc_pid|" \
    "cutover jemalloc|h1|http://127.0.0.1:$CUTOVER_PORT/|$CUTOVER_PID|" \
    "cutover glibc|h2c|http://127.0.0.1:$glibc_port/|$glibc_pid|" \
    "cutover jemalloc|h2c|http://127.0.0.1:$CUTOVER_PORT/|$CUTOVER_PID|"
  summarize "scenario allocator: $ROUNDS rounds x $DURATION, $CONNS connections, $THREADS threads" \
    "cutover jemalloc|cutover glibc" "cutover glibc|direct"
}

# Shadow traffic: the route at 100/0 with `shadow` copying to green, at
# sample 0.1 and 1.0, vs the same route without a shadow. Both backends are
# the one backend nginx, so a copy also costs it a request: req/s shows what
# the client sees on shared cores, CPU us/req what cutover itself pays.
scenario_shadow() {
  local route=$'[[routes]]\nname = "app"\nweights = { blue = 100, green = 0 }'
  start_cutover cutover "$route"
  local plain_port=$CUTOVER_PORT plain_pid=$CUTOVER_PID
  start_cutover cutover-shadow-0.1 "$route"$'\nshadow = { backend = "green", sample = 0.1 }'
  local tenth_port=$CUTOVER_PORT tenth_pid=$CUTOVER_PID tenth_admin=$CUTOVER_ADMIN
  start_cutover cutover-shadow-1.0 "$route"$'\nshadow = { backend = "green", sample = 1.0 }'
  run_matrix \
    "direct|h1|http://127.0.0.1:$BACKEND_PORT/|-|" \
    "cutover|h1|http://127.0.0.1:$plain_port/|$plain_pid|" \
    "cutover shadow 0.1|h1|http://127.0.0.1:$tenth_port/|$tenth_pid|" \
    "cutover shadow 1.0|h1|http://127.0.0.1:$CUTOVER_PORT/|$CUTOVER_PID|"
  local name admin
  for name in "0.1 $tenth_admin" "1.0 $CUTOVER_ADMIN"; do
    read -r name admin <<<"$name"
    log "shadow $name copies: $(curl -fsS "http://127.0.0.1:$admin/metrics" |
      awk '/^cutover_shadow_(requests|compared|mismatches)_total/ { printf "%s ", $0 }')"
  done
  summarize "scenario shadow: 100/0, shadow to green at sample 0.1 and 1.0, $ROUNDS rounds x $DURATION, $CONNS connections" \
    "cutover shadow 0.1|cutover" "cutover shadow 1.0|cutover" "cutover|direct"
}

# HTTPS termination: ECDSA P-256 certificate made here (openssl), TLS 1.3,
# each proxy with its usual TLS library (cutover: rustls; nginx, HAProxy:
# OpenSSL) and session resumption as configured by default plus nginx's
# shared cache. Keep-alive: wrk (HTTP/1.1; wrk offers no ALPN) and h2load
# (ALPN h2). A new connection per request: TLS_CLIENTS `openssl s_time`
# clients, each connecting, fetching / (HTTP/1.0) and closing in a loop,
# with a full handshake every time (-new) or resuming the first session
# (-reuse; the share actually resumed is counted from s_time's r/* marks).
scenario_tls() {
  local dir="$TMP/tls" port nginx_pids haproxy_pids
  command -v openssl >/dev/null || die "missing tool: openssl (install with: apt-get install -y openssl)"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null || die "openssl req failed"
  cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
  # cutover: its bench config with an https listener and [tls].
  mkdir -p "$TMP/cutover-tls"
  CUTOVER_PORT=$(free_port) CUTOVER_ADMIN=$(free_port) port=$(free_port)
  CUTOVER_CONFIG="$TMP/cutover-tls/cutover.toml"
  write_cutover_config "$CUTOVER_CONFIG" "$CUTOVER_PORT" "$CUTOVER_ADMIN"
  sed -i "s|^http = .*|&\nhttps = \"127.0.0.1:$port\"|" "$CUTOVER_CONFIG"
  printf '[tls]\ncerts = [{ cert = "%s", key = "%s" }]\n' "$dir/cert.pem" "$dir/key.pem" >>"$CUTOVER_CONFIG"
  start_bg "$TMP/cutover-tls/cutover.log" "$CUTOVER_BIN" run --config "$CUTOVER_CONFIG"
  CUTOVER_PID=$LAST_PID
  wait_http "http://127.0.0.1:$CUTOVER_PORT/" "$CUTOVER_PID" "$TMP/cutover-tls/cutover.log"
  local cutover_tls=$port
  # nginx: its bench config restarted with an ssl + http2 listener (ALPN
  # h2, http/1.1) and a shared session cache.
  start_nginx_proxy
  port=$(free_port)
  kill "$NGINX_PID"
  wait "$NGINX_PID" 2>/dev/null || true
  sed -i "s|^    listen 127.0.0.1:$NGINX_H2_PORT http2;|&\n    listen 127.0.0.1:$port ssl http2;\n    ssl_certificate $dir/cert.pem;\n    ssl_certificate_key $dir/key.pem;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;|" "$TMP/nginx/nginx.conf"
  start_bg "$TMP/nginx/stderr.log" nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf"
  NGINX_PID=$LAST_PID
  local nginx_tls=$port
  # HAProxy: one more bind with ssl and ALPN.
  start_haproxy
  port=$(free_port)
  kill "$HAPROXY_PID"
  wait "$HAPROXY_PID" 2>/dev/null || true
  sed -i "s|^  bind 127.0.0.1:$HAPROXY_H2_PORT proto h2|&\n  bind 127.0.0.1:$port ssl crt $dir/both.pem alpn h2,http/1.1|" "$TMP/haproxy/haproxy.cfg"
  start_bg "$TMP/haproxy/haproxy.log" haproxy -db -p "$TMP/haproxy/haproxy.pid" -f "$TMP/haproxy/haproxy.cfg"
  HAPROXY_PID=$LAST_PID
  local haproxy_tls=$port
  local -a targets=("cutover|$cutover_tls" "nginx|$nginx_tls" "haproxy|$haproxy_tls")
  local t name pids url i
  for t in "${targets[@]}"; do
    IFS='|' read -r name port <<<"$t"
    for ((i = 0; i < 100; i++)); do
      curl -fsSk -o /dev/null "https://127.0.0.1:$port/" 2>/dev/null && break
      sleep 0.1
    done
    [[ $(curl -fsSk -o /dev/null -w '%{http_version}' --http2 "https://127.0.0.1:$port/") == 2 ]] ||
      die "$name does not answer HTTPS with ALPN h2 on :$port"
  done
  nginx_pids=$(proc_tree "$NGINX_PID" | tr '\n' ' ')
  haproxy_pids=$(proc_tree "$HAPROXY_PID" | tr '\n' ' ')
  targets=("cutover|$cutover_tls|$CUTOVER_PID" "nginx|$nginx_tls|$nginx_pids" "haproxy|$haproxy_tls|$haproxy_pids")
  local round mode secs=$(seconds "$DURATION") clients=${TLS_CLIENTS:-2}
  local out t0 t1 n r cpu0 req
  local -a pid_list spids
  # s_time sends "GET <www> HTTP/1.0": a Host and Connection: close ride in it.
  req=$'/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Via: s_time'
  for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${targets[@]}"; do
      IFS='|' read -r name port pids <<<"$t"
      url="https://127.0.0.1:$port/"
      bench "$name" h1 "$round" "$url" "$pids"
      bench "$name" h2 "$round" "$url" "$pids"
      read -r -a pid_list <<<"$pids"
      for mode in new reuse; do
        out="$TMP/raw/$name.tls-$mode.$round"
        reset_peak "${pid_list[@]}"
        cpu0=$(cpu_ticks "${pid_list[@]}")
        t0=$(date +%s.%N)
        spids=()
        for ((i = 0; i < clients; i++)); do
          openssl s_time -connect "127.0.0.1:$port" "-$mode" -time "$secs" -www "$req" >"$out.$i" 2>&1 &
          spids+=($!)
        done
        wait "${spids[@]}" || true
        t1=$(date +%s.%N)
        n=$(cat "$out".* | awk '/connections in .* real seconds/ {n += $1} END {print n + 0}')
        # s_time marks each connection: r resumed, * a full handshake.
        r=$(grep -hE '^[*r]+$' "$out".* | tr -cd 'r' | wc -c)
        awk -v name="$name" -v proto="h1-$([[ $mode == new ]] && echo full || echo resumed)" \
          -v round="$round" -v n="$n" -v secs="$(echo "$t1 - $t0" | bc -l)" -v clients="$clients" \
          -v rss="$(peak_rss_kb "${pid_list[@]}")" -v hz="$CLK_TCK" \
          -v ticks="$(($(cpu_ticks "${pid_list[@]}") - cpu0))" \
          'BEGIN { printf "%s\t%s\t%s\t%.2f\t%.3f\t-\t0\t0\t%s\t%.2f\n", name, proto, round, n / secs, clients * secs * 1000 / n, rss, ticks / hz * 1e6 / n }' >>"$RESULTS"
        log "round $round $name tls $mode: $n connections in $(echo "$t1 - $t0" | bc -l) s, $r resumed"
        printf '%s\t%s\t%s\t%s\n' "$name" "$mode" "$n" "$r" >>"$TMP/tls.tsv"
      done
    done
  done
  summarize "scenario tls: ECDSA P-256, $ROUNDS rounds x $DURATION; keep-alive: $CONNS connections (wrk h1, h2load h2 via ALPN); conn/req: $clients openssl s_time clients"
  echo "handshakes resumed (s_time's marks), summed over rounds:"
  awk -F'\t' '{ n[$1 " " $2] += $3; r[$1 " " $2] += $4 }
    END { for (k in n) printf "  %-16s %7d of %7d\n", k, r[k], n[k] }' "$TMP/tls.tsv" | sort
}

# ---------------------------------------------------------------- main

# HTTP/2 to the backend: h2load (h2c) through each proxy to the backend's
# h2c port. cutover: protocol = "h2c"; haproxy: server ... proto h2; nginx:
# grpc_pass (its only HTTP/2 upstream; proxy_pass speaks HTTP/1.x only),
# shown as n/a if it does not answer a plain GET that way.
scenario_h2() {
  local h2c=$'[backends.h2]\nendpoints = ["127.0.0.1:'"$BACKEND_H2_PORT"$'"]\nprotocol = "h2c"\n[[routes]]\nname = "app"\nweights = { h2 = 100 }'
  start_cutover cutover "$h2c"
  local dir="$TMP/nginx-h2" specs=() nginx_pids haproxy_pids
  NGINX_H2_PORT=$(free_port)
  mkdir -p "$dir/temp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $PROXY_WORKERS;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $NGINX_CONNS; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $dir/temp/body;
  upstream backend_h2 {
    server 127.0.0.1:$BACKEND_H2_PORT;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$NGINX_H2_PORT http2;
    location / { grpc_pass grpc://backend_h2; }
  }
}
EOF
  start_bg "$dir/stderr.log" nginx -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf"
  NGINX_PID=$LAST_PID
  dir="$TMP/haproxy-h2"
  HAPROXY_H2_PORT=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread $PROXY_WORKERS
  maxconn $HAPROXY_MAXCONN
defaults
  mode http
  http-reuse always
  timeout connect 5s
  timeout client $HAPROXY_TIMEOUT
  timeout server $HAPROXY_TIMEOUT
frontend fe
  bind 127.0.0.1:$HAPROXY_H2_PORT proto h2
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_H2_PORT proto h2
EOF
  haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy rejected $dir/haproxy.cfg"
  start_bg "$dir/haproxy.log" haproxy -db -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg"
  HAPROXY_PID=$LAST_PID
  local target name url pids tries
  for target in "direct|http://127.0.0.1:$BACKEND_H2_PORT/|-" \
    "cutover|http://127.0.0.1:$CUTOVER_PORT/|$CUTOVER_PID" \
    "nginx|http://127.0.0.1:$NGINX_H2_PORT/|NGINX" \
    "haproxy|http://127.0.0.1:$HAPROXY_H2_PORT/|HAPROXY"; do
    IFS='|' read -r name url pids <<<"$target"
    for ((tries = 0; tries < 50; tries++)); do
      curl -fsS -o /dev/null --http2-prior-knowledge "$url" 2>/dev/null && break
      sleep 0.1
    done
    [[ $pids == NGINX ]] && pids=$(proc_tree "$NGINX_PID" | tr '\n' ' ')
    [[ $pids == HAPROXY ]] && pids=$(proc_tree "$HAPROXY_PID" | tr '\n' ' ')
    if curl -fsS -o /dev/null --http2-prior-knowledge "$url"; then
      specs+=("$name|h2c|$url|$pids|")
    else
      log "$name does not answer GET / over an HTTP/2 upstream on $url: n/a"
      printf '%s\th2c\n' "$name" >>"$NA_FILE"
    fi
  done
  run_matrix "${specs[@]}"
  summarize "scenario h2 (h2c client, h2c backend): $ROUNDS rounds x $DURATION, $CONNS connections, $H2_STREAMS stream/conn" \
    "cutover|nginx" "cutover|haproxy" "cutover|direct"
}

# SCENARIO=goals: each goal's scenario in turn, as a child run of this
# script with the same binary, its output kept in $TMP/goals; then the
# goals read from those tables.
scenario_goals() {
  local dir="$TMP/goals" s
  mkdir -p "$dir"
  for s in basic instructions tls routes; do
    log "goals: scenario $s"
    SCENARIO=$s CUTOVER_BIN=$CUTOVER_BIN "${BASH_SOURCE[0]}" >"$dir/$s.txt" ||
      die "scenario $s failed; its output: $dir/$s.txt"
    cat "$dir/$s.txt"
  done
  python3 - "$dir" <<'PY'
import sys

d = sys.argv[1]
def rows(name):
    return [l.split() for l in open(f"{d}/{name}.txt")]

basic = {}  # (target, proto) -> (p99 ms, CPU us per request)
for r in rows("basic"):
    if len(r) == 8 and r[0] in ("cutover", "nginx", "haproxy") and r[1] == "h1":
        basic[r[0]] = (float(r[4]), float(r[7]))
instr = {r[0]: int(r[1]) for r in rows("instructions")
         if len(r) == 3 and r[0] in ("cutover", "nginx", "haproxy") and r[1].isdigit()}
full = {r[0]: float(r[2]) for r in rows("tls") if len(r) == 8 and r[1] == "h1-full"}
rss = {}
for r in rows("routes"):
    if len(r) >= 5 and r[0] == "10000" and r[2] == "MiB" and r[4] == "MiB":
        rss = {"idle": float(r[1]), "after traffic": float(r[3])}

table = []
def goal(text, ours, ref, ref_name, met, unit=""):
    ratio = f"{ours / ref:.3f}" if ours is not None and ref else "n/a"
    show = lambda v: "n/a" if v is None else f"{v:g}{unit}"
    table.append((text, show(ours), f"{show(ref)} ({ref_name})" if ref_name else show(ref), ratio,
                  "n/a" if ours is None or ref is None else ("yes" if met(ours, ref) else "no")))

goal("instructions per request <= HAProxy's", instr.get("cutover"), instr.get("haproxy"), "haproxy", lambda a, b: a <= b)
goal("  stretch: <= nginx's", instr.get("cutover"), instr.get("nginx"), "nginx", lambda a, b: a <= b)
cpu = lambda t: basic[t][1] if t in basic else None
p99 = lambda t: basic[t][0] if t in basic else None
goal("CPU per request (h1) within 5% of nginx's", cpu("cutover"), cpu("nginx"), "nginx", lambda a, b: a <= 1.05 * b, " us")
goal("p99 (h1) <= HAProxy's", p99("cutover"), p99("haproxy"), "haproxy", lambda a, b: a <= b, " ms")
goal("TLS full handshakes/s >= nginx's", full.get("cutover"), full.get("nginx"), "nginx", lambda a, b: a >= b)
for k in ("idle", "after traffic"):
    goal(f"10,000 routes, RSS {k} < 64 MiB", rss.get(k), 64.0, "", lambda a, b: a < b, " MiB")

print("\nissue 19 goals, this run (scenarios basic, instructions, tls, routes above)")
w = [max(len(r[i]) for r in table) for i in range(5)]
head = ("goal", "cutover", "reference", "ratio", "met")
for r in [head] + table:
    print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(max(w[i], len(head[i]))) for i, c in enumerate(r)))
PY
}

main() {
  case $SCENARIO in
    basic | sticky | routes | reload | idle | large | instructions | h2 | tls | allocator | shadow) ;;
    goals)
      check_tools
      build_cutover
      scenario_goals
      return
      ;;
    *) die "unknown SCENARIO=$SCENARIO (basic|sticky|routes|reload|idle|large|instructions|h2|tls|allocator|shadow|goals)" ;;
  esac
  check_tools
  build_cutover
  : >"$RESULTS"
  : >"$NA_FILE"
  log "temp dir $TMP; scenario $SCENARIO"
  start_backend
  "scenario_$SCENARIO"
}

main "$@"
