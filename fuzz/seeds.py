#!/usr/bin/env python3
"""Writes the hand-made seeds of each target into fuzz/corpus/<target>/seed-*.
Run from anywhere; what the fuzzers add beside them is minimized with
`cargo fuzz cmin <target>` (see README, "Fuzzing")."""
import os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

BASE = """[listen]
http = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[timeouts]
connect = "1s"
request = "60s"

[backends.blue]
endpoints = ["127.0.0.1:9001"]

[backends.green]
endpoints = ["127.0.0.1:9002", "http://localhost:9003"]

[[routes]]
name = "app"
weights = { blue = 90, green = 10 } # canary
sticky = { cookie = "cutover", max_age = "30d" }
override = { header = "x-cutover-backend", cookie = "cutover_force" }

[[routes]]
name = "api"
host = "*.example.com"
path_prefix = "/api"
[routes.weights]
blue = 1 # one
green = 0
"""

RICH = """[listen]
http = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9901"
token = "t0k"
[timeouts]
header_read = "10s"
connect = "1s"
request = "60s"
idle = "60s"
drain = "30s"
body_idle = "30s"
tunnel_idle = "1h"
graceful_close = "5s"
[limits]
max_header_bytes = 65536
max_headers = 100
max_connections = 1000
max_concurrent_streams = 100
[server]
workers = 2
drain_delay = "1s"
[metrics]
buckets = [0.005, 0.05, 0.5, 5.0]
[rollout]
state_dir = "state"
notify = { webhook = "https://hooks.example.com/x" }
[access_log]
path = "stdout"
format = "json"
sample = 0.5
log_query = false
[backends.blue]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9011"]
balance = "p2c"
retries = 2
retry_on = ["5xx"]
retry_buffer_bytes = 65536
max_connections = 64
[backends.blue.health]
path = "/healthz"
interval = "2s"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 3
expected_status = [200, 204]
[backends.blue.outlier]
consecutive_failures = 5
base_ejection_time = "30s"
max_ejection_time = "5m"
max_ejected_percent = 50
on = ["5xx"]
[backends.green]
endpoints = ["https://127.0.0.1:9002"]
protocol = "auto"
insecure_skip_verify = true
[[routes]]
name = "app"
host = "shop.example.com"
path_prefix = "/"
weights = { blue = 100, green = 0 }
drain = true
expose_backend_header = true
failover = false
sticky = { cookie = "s", secret = "k3y", header = "x-user", hash_seed = 7 }
override = { header = "x-cutover-backend", token = "t" }
[routes.analysis]
baseline = "blue"
window = "5m"
confidence = 0.95
min_requests = 200
max_error_rate_increase = 0.01
max_latency_increase = "10ms"
quantile = 0.99
source = { prometheus = "http://prometheus:9090", lag = "30s" }
[routes.rollout]
id = "v2.0"
canary = "green"
steps = [1, 10, 50, 100]
hold = "5m"
min_requests = 500
on_failure = "rollback"
start = "2026-12-01T18:00:00Z"
[[routes]]
name = "api"
path_prefix = "/api"
weights = { blue = 1, green = 1 }
"""

INLINE = """[listen]
http = "[::1]:0"
[backends.blue]
endpoints = ["127.0.0.1:1"]
[backends.green]
endpoints = ["127.0.0.1:2"]
routes = [ { name = "app", weights = { blue = 50, green = 50 } }, { name = "api", path_prefix = "/api", weights = { green = 3 } } ]
"""

# config: valid files, and each kind of mistake.
put("config", "base", BASE)
put("config", "rich", RICH)
put("config", "inline", INLINE)
put("config", "crlf-bom", "\ufeff" + BASE.replace("\n", "\r\n"))
put("config", "unknown-key", BASE.replace("connect =", "conect ="))
put("config", "bad-duration", BASE.replace('"60s"', '"60 parsecs"'))
put("config", "bad-weight", BASE.replace("blue = 90", "blue = -90"))
put("config", "zero-weights", BASE.replace("blue = 90, green = 10", "blue = 0, green = 0"))
put("config", "unknown-backend", BASE.replace("green = 0", "red = 0"))
put("config", "syntax", BASE.replace("[[routes]]", "[[routes]", 1))
put("config", "bad-endpoint", BASE.replace("127.0.0.1:9001", "ftp://x:99999"))
put("config", "empty", "")

# edit: [rollback?][route selector][pairs...][to] then a config.
def edit_seed(rollback, route, pairs, to):
    b = bytes([1 if rollback else 0])
    b += {None: b"\x00", "app": b"\x02\x00", "api": b"\x02\x01"}[route]
    b += bytes([len(pairs) - 1])
    for backend, w in pairs:
        b += bytes([{"blue": 0, "green": 1, "red": 2}[backend], 1, w])
    b += bytes([{"blue": 0, "green": 1, "red": 2}[to]])
    return b
for name, text in [("base", BASE), ("rich", RICH), ("inline", INLINE),
                   ("crlf-bom", "\ufeff" + BASE.replace("\n", "\r\n"))]:
    put("edit", f"set-{name}", edit_seed(False, None, [("blue", 50), ("green", 50)], "blue") + text.encode())
    put("edit", f"set-app-{name}", edit_seed(False, "app", [("green", 100), ("blue", 0)], "blue") + text.encode())
    put("edit", f"rollback-{name}", edit_seed(True, None, [("blue", 1)], "blue") + text.encode())
    put("edit", f"rollback-api-{name}", edit_seed(True, "api", [("blue", 1)], "green") + text.encode())

# cookie: [signed][secret][name][max-age?][bucket][backend?][secure] ...
def cookie_seed(signed, secret, bucket, backend, tail=b""):
    b = bytes([1 if signed else 0, len(secret)]) + secret
    b += bytes([2, 0, 1, 2])               # a 3-byte name
    b += b"\x00"                           # no max-age
    b += struct.pack("<H", bucket)
    b += (b"\x01\x03\x00\x01\x02\x03" if backend else b"\x00")
    b += b"\x01"                           # secure
    return b + tail
put("cookie", "unsigned", cookie_seed(False, b"", 42, False))
put("cookie", "signed", cookie_seed(True, b"k3y", 9999, True))
put("cookie", "signed-mutated", cookie_seed(True, b"secret", 7, True, b"\x03\x05\x01\x00\x02\x07\x02\x03"))
put("cookie", "forged", cookie_seed(True, b"k", 1, False, b"\x00" + b"7.blue.AAAAAAAAAAAAAAAAAAAAAA"))
put("cookie", "raw", cookie_seed(False, b"", 10000, False, b"\x00" + b"0009999.green"))

# headers: [tls][v4?][ip...][authority?] then (name, value) pairs.
def hdrs(pairs, authority=None):
    b = b"\x00\x01" + bytes([10, 0, 0, 1])
    b += (b"\x01" + bytes([len(authority)]) + authority) if authority else b"\x00"
    b += bytes([len(pairs)])
    for n, v in pairs:
        b += b"\x00" + bytes([len(n)]) + n + b"\x00" + bytes([len(v)]) + v
    return b
put("headers", "hop", hdrs([(b"connection", b"close, x-secret"), (b"x-secret", b"1"), (b"keep-alive", b"5"),
                            (b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"content-length", b"3"),
                            (b"host", b"shop"), (b"x-forwarded-for", b"1.1.1.1")]))
put("headers", "upgrade", hdrs([(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c, websocket"),
                                (b"http2-settings", b"AAA"), (b"forwarded", b"for=6.6.6.6"), (b"host", b"h")],
                               b"user@other.host:8080"))
put("headers", "connection-host", hdrs([(b"connection", b"host, x-forwarded-for, te"), (b"host", b"a"),
                                        (b"x-forwarded-for", b"9.9.9.9"), (b"x-forwarded-host", b"evil"), (b"te", b"gzip")]))

# routing: [split weights...][routes...][requests...]: start from varied bytes.
put("routing", "two", bytes([1, 90, 0, 10, 0, 5, 0]) + bytes(range(1, 120)))
put("routing", "three", bytes([2, 1, 0, 0, 0, 3, 0, 9, 0]) + bytes(range(200, 256)) + bytes(range(0, 100)))
put("routing", "hosts", bytes([0, 1, 0, 1, 0, 5, 2, 1, 2, 50, 50, 0, 2, 3, 1, 3, 60, 40, 1, 1, 0, 4, 1, 1, 1, 10, 1, 1, 3, 2, 1, 2, 2, 1, 3]))

# http1: requests as a client sends them, and the classic smuggling shapes.
H = "Host: h\r\n"
put("http1", "get", "GET / HTTP/1.1\r\n" + H + "\r\n")
put("http1", "pipelined", "GET /a HTTP/1.1\r\n" + H + "\r\nPOST /b HTTP/1.1\r\n" + H + "Content-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n" + H + "\r\n")
put("http1", "chunked", "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\n" + H + "\r\n")
put("http1", "cl-te", "POST /a HTTP/1.1\r\n" + H + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "te-cl", "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n")
put("http1", "te-te", "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "cl-plus", "POST /a HTTP/1.1\r\n" + H + "Content-Length: +5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "cl-double", "POST /a HTTP/1.1\r\n" + H + "Content-Length: 5\r\nContent-Length: 5, 5\r\n\r\nhelloGET /b HTTP/1.1\r\n" + H + "\r\n")
put("http1", "obs-fold", "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "bare-lf", "GET /a HTTP/1.1\n" + "Host: h\n\nGET /b HTTP/1.1\nHost: h\n\n")
put("http1", "absolute", "GET http://other.host/x?q HTTP/1.1\r\n" + H + "\r\nGET /y HTTP/1.0\r\n\r\n")
put("http1", "upgrade", "GET /ws HTTP/1.1\r\n" + H + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "chunk-ext-lf", "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5;\nx\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n")
put("http1", "expect", "PUT /a HTTP/1.1\r\n" + H + "Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc")
# CONNECT then a request: found by this seed (the backend got the GET); CONNECT is now answered 501.
put("http1", "connect-then-request", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
