#!/usr/bin/env bash
# Installs what Tern's build and tests need, idempotently: Debian packages via
# apt-get (only when missing), Rust components via rustup, cargo-fuzz via cargo.
# Usage: scripts/install-deps.sh [--fuzz]
set -euo pipefail

RUST_MIN="1.95"
want_fuzz=false
for argument in "$@"; do
    case "$argument" in
        --fuzz) want_fuzz=true ;;
    esac
done

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing_packages=()
need_package() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || missing_packages+=("$1"); }
# A C compiler: the test of the generated C header compiles it; libFuzzer links with it.
need_package build-essential
# The XDP coordinator: clang-19 compiles bpf/*.bpf.c against libbpf's headers.
need_package clang-19
need_package libbpf-dev
# Network namespaces, veth pairs and bridges of the local cluster.
need_package iproute2
# Packet loss for the chaos tests (tc netem is not available on these kernels).
need_package nftables
# redis-cli drives the gateway's tests; they compare the gateway's answers to
# bad input with redis-server's, which is also the peer of the benchmark
# comparison (Redis 7 from Debian).
need_package redis-tools
need_package redis-server
# The metrics test has a real Prometheus server scrape a cluster.
need_package prometheus
if ((${#missing_packages[@]})); then
    echo "installing Debian packages: ${missing_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}"
    # Debian starts the redis-server it installs as a service on port 6379,
    # the gateway's default; tests and benchmarks run their own. A service
    # this script installed is stopped and disabled (one that was there
    # before is left alone).
    if [[ " ${missing_packages[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
    # Likewise the Prometheus service (port 9090) and its node exporter.
    if [[ " ${missing_packages[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Tern needs Rust >= $RUST_MIN (https://rustup.rs); Debian's cargo is too old." >&2
    exit 1
fi
rust_version=$(rustc --version | awk '{print $2}')
if [[ "$(printf '%s\n%s\n' "$RUST_MIN" "$rust_version" | sort -V | head -1)" != "$RUST_MIN" ]]; then
    echo "error: rustc $rust_version is older than $RUST_MIN; run: rustup update stable" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    for component in clippy rustfmt; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
    done
fi
if $want_fuzz && ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
