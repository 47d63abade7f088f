#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] — run every fuzz target in fuzz/ for a bounded time.
#
#   SECONDS   time per target (default 20)
#
# Targets: manifest (manifest/index/referrers parsing and the names made from
# them), link_header (`Link` pagination), www_authenticate (challenges).
# Installs the nightly toolchain's cargo-fuzz when missing. A crash stops the
# run with a non-zero status; the reproducer is left in fuzz/artifacts/<target>/
# (replay it with `cargo +nightly fuzz run <target> <file>`). Runs start from the
# checked-in seeds in fuzz/seeds/<target>/; what they find grows fuzz/corpus/<target>/
# (ignored by git).
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REGFS_ROOT/fuzz"

SECONDS_PER_TARGET="${1:-20}"
[[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || die "usage: scripts/fuzz.sh [SECONDS]"
ensure_cargo
rustup toolchain list 2>/dev/null | grep -q '^nightly' || run rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    run cargo install cargo-fuzz --locked
fi

for target in $(cargo +nightly fuzz list); do
    section "fuzz $target (${SECONDS_PER_TARGET}s)"
    mkdir -p "corpus/$target"
    # Inputs and headers are small; 64 KiB covers every interesting shape.
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -rss_limit_mb=2048
done
log "fuzz: every target ran ${SECONDS_PER_TARGET}s without a crash"
