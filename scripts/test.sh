#!/usr/bin/env bash
# scripts/test.sh — everything CI runs (.ci/run execs this), unattended.
#
#   1. Debian packages the tests need (installed only when missing)
#   2. cargo fmt --all -- --check            (when rustfmt is installed; differences fail)
#   3. cargo build --release
#   4. cargo clippy --release --all-targets  (when clippy is installed; errors fail,
#                                             warnings too, unless REGFS_CLIPPY_DENY_WARNINGS=0)
#   5. scripts/demo.sh, non-interactive      (smoke test of the real binary;
#                                             skip with REGFS_SKIP_DEMO=1)
#   5b. scripts/fuzz.sh, 15 s per target     (REGFS_FUZZ_SECONDS; skip with REGFS_SKIP_FUZZ=1)
#   6. the test suite: cargo nextest run --release when cargo-nextest is
#      installed, else cargo test --release (unit + integration tests)
#
# Every step runs even when an earlier one failed (a failed build still lets the
# test runner show the compiler errors); the exit status is non-zero if any step
# failed. The test runner goes last so the output ends with its summary line.
set -uo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REGFS_ROOT" || exit 1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

FAILED=()
step_failed() { FAILED+=("$1"); log "FAILED: $1"; }

section "Packages"
ensure_packages || step_failed "ensure_packages"
ensure_ferro || step_failed "ensure_ferro"
ensure_cargo

if cargo fmt --version >/dev/null 2>&1; then
    section "cargo fmt --all -- --check"
    cargo fmt --all -- --check || step_failed "cargo fmt (run: cargo fmt --all)"
else
    log "rustfmt not installed; skipping the format check"
fi

section "cargo build --release"
cargo build --release || step_failed "cargo build --release"

if cargo clippy --version >/dev/null 2>&1; then
    clippy_args=(--release --all-targets)
    lint_args=()
    [[ ${REGFS_CLIPPY_DENY_WARNINGS:-1} == 1 ]] && lint_args=(-D warnings)
    section "cargo clippy ${clippy_args[*]} -- ${lint_args[*]}"
    cargo clippy "${clippy_args[@]}" -- "${lint_args[@]}" || step_failed "cargo clippy"
else
    log "clippy not installed; skipping lints"
fi

if [[ ${REGFS_SKIP_DEMO:-0} != 1 ]]; then
    section "Smoke test: scripts/demo.sh (non-interactive)"
    REGFS_DEMO_NONINTERACTIVE=1 bash scripts/demo.sh </dev/null || step_failed "scripts/demo.sh"
fi

# Fuzz the parsers of untrusted input (manifests, Link, WWW-Authenticate) for a
# bounded time. Needs the nightly toolchain (cargo fuzz); its output goes to a
# file, shown only when a target crashes.
if [[ ${REGFS_SKIP_FUZZ:-0} != 1 ]]; then
    section "Fuzz: scripts/fuzz.sh ${REGFS_FUZZ_SECONDS:-15} (log: target/fuzz.log)"
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        mkdir -p target
        if bash scripts/fuzz.sh "${REGFS_FUZZ_SECONDS:-15}" >target/fuzz.log 2>&1; then
            tail -n 1 target/fuzz.log
        else
            tail -n 60 target/fuzz.log
            step_failed "scripts/fuzz.sh"
        fi
    else
        log "no nightly toolchain on this machine: fuzzing skipped"
    fi
fi

if ((${#FAILED[@]})); then
    section "Steps failed so far: ${FAILED[*]} (the test suite runs anyway)"
fi

# Documentation tests exist only for a library target; nextest does not run them.
if [[ -f src/lib.rs ]]; then
    section "cargo test --release --doc"
    cargo test --release --doc || step_failed "doc tests"
fi

# Nothing is printed after the runner: its summary stays the last output.
runner_rc=0
if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run --release --no-fail-fast"
    cargo nextest run --release --no-fail-fast || runner_rc=$?
else
    section "cargo test --release --no-fail-fast (cargo-nextest not installed)"
    cargo test --release --no-fail-fast || runner_rc=$?
fi

((${#FAILED[@]} == 0)) || exit 1
exit "$runner_rc"
