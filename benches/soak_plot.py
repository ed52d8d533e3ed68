#!/usr/bin/env python3
"""Helpers of benches/soak.sh.

  soak_plot.py row WRK_OUT METRICS_BEFORE METRICS_AFTER T RSS FDS THREADS CONNS EVENTS
      one CSV row (TARGET_RPS from the environment)
  soak_plot.py drift CSV CAPACITY TARGET
      the drift table (markdown): first minutes vs last minutes
  soak_plot.py plot CSV PNG
      the PNG (needs matplotlib)
"""
import csv
import os
import re
import sys


def wrk_numbers(path):
    text = open(path).read()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    return (
        float(rps.group(1)) if rps else 0.0,
        float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        errors,
    )


def buckets(path, name="cutover_request_duration_seconds_bucket"):
    """Cumulative counts by upper bound, summed over every series."""
    out = {}
    for line in open(path):
        if not line.startswith(name + "{"):
            continue
        le = re.search(r'le="([^"]+)"', line)
        if le:
            bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def quantile(q, before, after):
    """histogram_quantile over the window, linear within a bucket (ms)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for b, c in zip(bounds, counts):
        if c >= rank:
            if b == float("inf"):
                return prev_bound * 1000
            return 1000 * (prev_bound + (b - prev_bound) * (rank - prev_count) / max(c - prev_count, 1e-9))
        prev_bound, prev_count = b, c
    return float("nan")


def row(args):
    wrk_out, before, after, t, rss, fds, threads, conns, events = args
    rps, p99, errors = wrk_numbers(wrk_out)
    server_p99 = quantile(0.99, buckets(before), buckets(after))
    target = os.environ.get("TARGET_RPS", "")
    writer = csv.writer(sys.stdout)
    writer.writerow([t, rss, fds, threads, conns, round(rps), target,
                     round(p99, 3), round(server_p99, 3), errors, events])


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


COLUMNS = [
    ("rss_kib", "RSS (KiB)"),
    ("fds", "open fds"),
    ("threads", "threads"),
    ("connections", "client connections open"),
    ("client_p99_ms", "p99, client (ms)"),
    ("server_p99_ms", "p99, server (ms)"),
    ("rps", "requests/s"),
]


def mean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def slope_per_hour(ts, ys):
    pts = [(t, y) for t, y in zip(ts, ys) if y == y]
    if len(pts) < 3:
        return float("nan")
    mt = mean([t for t, _ in pts])
    my = mean([y for _, y in pts])
    num = sum((t - mt) * (y - my) for t, y in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return num / den * 3600 if den else float("nan")


def drift(args):
    path, capacity, target = args
    rows = read(path)[1:]  # the first window warms up
    if len(rows) < 4:
        print("too few windows for a drift")
        return
    k = max(2, min(18, len(rows) // 5))  # 3 minutes, or a fifth of a short run
    first, last = rows[:k], rows[-k:]
    ts = [float(r["t_s"]) for r in rows]
    minutes = (ts[-1] - ts[0] + 10) / 60
    errors = sum(int(r["errors"]) for r in read(path))
    print(f"Soak: {minutes:.0f} min after warm-up, capacity {capacity} req/s, target {target} req/s; "
          f"first {k} vs last {k} windows of 10 s; {errors} client errors in all.\n")
    print("| metric | first | last | change | trend per hour (least squares) |")
    print("|---|---|---|---|---|")
    for col, label in COLUMNS:
        ys = [float(r[col]) for r in rows]
        a, b = mean([float(r[col]) for r in first]), mean([float(r[col]) for r in last])
        pct = f" ({100 * (b - a) / a:+.1f} %)" if a else ""
        print(f"| {label} | {a:.1f} | {b:.1f} | {b - a:+.1f}{pct} | {slope_per_hour(ts, ys):+.1f} |")


def plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, png = args
    rows = read(path)
    t = [float(r["t_s"]) / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    series = [
        (axes[0], [("rss_kib", "RSS (MiB)", 1 / 1024, "-")]),
        (axes[1], [("fds", "open fds", 1, "-"), ("threads", "threads", 1, "--"),
                   ("connections", "client connections", 1, ":")]),
        (axes[2], [("client_p99_ms", "p99 client (ms)", 1, "-"), ("server_p99_ms", "p99 server (ms)", 1, "--")]),
        (axes[3], [("rps", "requests/s", 1, "-"), ("target_rps", "target", 1, "--"), ("errors", "errors / 10 s", 1, ":")]),
    ]
    for ax, lines in series:
        for col, label, scale, style in lines:
            ys = [float(r[col]) * scale if r[col] not in ("", "nan") else float("nan") for r in rows]
            ax.plot(t, ys, style, label=label)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    for r in rows:
        for e in filter(None, r["events"].split(";")):
            color = "tab:red" if "restart" in e else "tab:orange"
            if "stopped" in e or "unhealthy" in e:
                for ax in axes:
                    ax.axvline(float(r["t_s"]) / 60, color=color, alpha=0.3, lw=1)
    axes[-1].set_xlabel("minutes (red: blue restarted, orange: green health flap; config rewritten every 5 s)")
    fig.suptitle("Cutover soak")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


if __name__ == "__main__":
    {"row": row, "drift": drift, "plot": plot}[sys.argv[1]](sys.argv[2:])
