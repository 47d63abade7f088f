#!/usr/bin/env bash
# scripts/demo.sh — see regfs work in a minute.
#
# Builds regfs, starts a throw-away local registry with a few sample images,
# mounts it at ./mnt (repository root) and looks around with ls, cat, jq and tar.
# With a terminal on stdin it then waits for Enter so you can explore ./mnt from
# another shell; without one (CI), or with REGFS_DEMO_NONINTERACTIVE=1, it goes
# straight on. Always unmounts, stops the registry and removes its temp dirs.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REGFS_ROOT"

MNT=./mnt
WORK=""
CREATED_MNT=0
DEMO_OK=0

cleanup() {
    local rc=$? pid i
    set +e
    trap - EXIT INT TERM
    section "Cleaning up"
    if is_mounted "$MNT"; then
        printf '$ fusermount3 -u %s\n' "$MNT"
        regfs_unmount "$MNT"
    fi
    if [[ -n $WORK ]]; then
        # The daemon (background mode) exits on unmount; make sure of it.
        for pid in $(regfs_daemon_pids "$WORK/cache"); do
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null || continue
            log "regfs daemon $pid did not exit within 10 s of the unmount; stopping it"
            kill "$pid" 2>/dev/null
        done
        # The background daemon logs to <cache-dir>/logs/<mountpoint>.log.
        for f in "$WORK"/cache/logs/*.log; do
            if ((DEMO_OK == 0)) && [[ -s $f ]]; then
                log "--- last lines of the regfs log ($f) ---"
                tail -n 40 "$f" >&2
            fi
        done
    fi
    stop_registry
    [[ -n $WORK ]] && rm -rf "$WORK"
    ((CREATED_MNT)) && rmdir "$MNT" 2>/dev/null
    if ((rc == 0)); then echo "demo finished"; else echo "demo FAILED (exit $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# show 'COMMAND' — print it as typed, run it (with a time limit, so a hung
# mount cannot hang CI).
show() {
    printf '\n$ %s\n' "$1"
    timeout "${REGFS_DEMO_TIMEOUT:-60}" bash -o pipefail -c "$1"
}

section "Checking packages and building regfs (cargo build --release)"
ensure_packages
ensure_cargo
ensure_fuse
cargo build --release
[[ -x $REGFS_BIN ]] || die "cargo build did not produce $REGFS_BIN"

if is_mounted "$MNT"; then
    die "$REGFS_ROOT/mnt is already mounted (a previous demo?); run: fusermount3 -u $REGFS_ROOT/mnt"
fi
if [[ ! -d $MNT ]]; then
    mkdir "$MNT"
    CREATED_MNT=1
fi
[[ -z "$(ls -A "$MNT")" ]] || die "$REGFS_ROOT/mnt is not empty"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/regfs-demo.XXXXXX")"

section "Starting a local registry with sample images"
start_registry "$WORK/registry"
L="$WORK/layers"
mkdir -p "$L"
make_layer "$L/alpine-base.tar.gz" "alpine base" >/dev/null
make_layer "$L/alpine-3.19.tar.gz" "alpine 3.19" >/dev/null
make_layer "$L/alpine-3.20.tar.gz" "alpine 3.20" >/dev/null
make_layer "$L/alpine-edge.tar.gz" "alpine edge" >/dev/null
make_layer "$L/extras.tar.gz" "alpine extras" >/dev/null
make_layer "$L/busybox.tar.gz" "busybox" >/dev/null
make_layer "$L/busybox-1.36.tar.gz" "busybox 1.36" >/dev/null

make_image library/alpine 3.19 "$L/alpine-base.tar.gz" "$L/alpine-3.19.tar.gz" >/dev/null
make_image library/alpine 3.20 "$L/alpine-base.tar.gz" "$L/alpine-3.20.tar.gz" >/dev/null
make_image library/alpine latest "$L/alpine-base.tar.gz" "$L/alpine-3.20.tar.gz" >/dev/null
make_image library/alpine edge "$L/alpine-base.tar.gz" "$L/alpine-edge.tar.gz" >/dev/null
make_image library/alpine/extras latest "$L/extras.tar.gz" >/dev/null
make_image library/alpine/extras 1.0 "$L/extras.tar.gz" >/dev/null
make_image library/busybox 1.36 "$L/busybox-1.36.tar.gz" >/dev/null
make_image library/busybox latest "$L/busybox.tar.gz" >/dev/null
make_index multi/arch latest >/dev/null
echo "registry $REGISTRY_URL holds:"
for repo in $(curl -sf "$REGISTRY_URL/v2/_catalog" | jq -r '.repositories[]'); do
    printf '  %-24s tags: %s\n' "$repo" "$(curl -sf "$REGISTRY_URL/v2/$repo/tags/list" | jq -r '.tags | sort | join(" ")')"
done

section "Mounting: regfs mount --cache-dir $WORK/cache $REGISTRY_URL ./mnt"
printf '$ %s\n' "target/release/regfs mount --cache-dir $WORK/cache $REGISTRY_URL ./mnt"
timeout 60 "$REGFS_BIN" mount --cache-dir "$WORK/cache" "$REGISTRY_URL" "$MNT" ||
    die "regfs mount failed (exit $?)"
is_mounted "$MNT" || die "regfs mount returned but ./mnt is not a mount point"

section "Repositories are directories; names nest"
show "ls mnt"
show "ls mnt/library"
show "ls mnt/library/alpine"

section "Tags are symlinks to manifests (by digest)"
show "ls -l mnt/library/alpine/_tags"

section "The exact manifest the registry serves"
show "cat mnt/library/alpine/_tags/latest/manifest.json | jq ."
show "ls -l mnt/library/alpine/_tags/latest/ mnt/library/alpine/_tags/latest/layers/"

section "Blobs: a layer is a real tar.gz, read lazily from the registry"
LAYER="$(jq -r '.layers[-1].digest' "$MNT/library/alpine/_tags/latest/manifest.json")"
show "tar -tzf mnt/library/alpine/_blobs/$LAYER"
show "sha256sum mnt/library/alpine/_blobs/$LAYER"
got="sha256:$(sha256sum "$MNT/library/alpine/_blobs/$LAYER" | cut -d' ' -f1)"
[[ $got == "$LAYER" ]] || die "blob content hashes to $got, not $LAYER"
echo "ok: the bytes hash to their name"

section "Inside the image: its layers applied in order, read lazily (rootfs/ is not listed, enter it by name)"
show "find mnt/library/alpine/_tags/latest/rootfs -type f"
FILE="$(cd "$MNT/library/alpine/_tags/latest/rootfs" && find . -type f -path '*3.20*' | head -n 1)"
[[ -n $FILE ]] || die "rootfs of library/alpine:latest shows no file of its 3.20 layer"
show "cat mnt/library/alpine/_tags/latest/rootfs/${FILE#./} | head -n 3"
show "diff -r mnt/library/alpine/_tags/3.20/rootfs mnt/library/alpine/_tags/latest/rootfs && echo same files"

section "A multi-arch index: one directory per platform"
show "ls -l mnt/multi/arch/_tags/latest/manifests/"

section "Daemon counters (mnt/.regfs/stats)"
show "cat mnt/.regfs/stats"

DEMO_OK=1
if [[ -t 0 && -z ${REGFS_DEMO_NONINTERACTIVE:-} && ${CI:-} != true ]]; then
    section "Explore"
    echo "The registry is mounted at $REGFS_ROOT/mnt — try it from another shell, e.g.:"
    echo "  ls $REGFS_ROOT/mnt/library/alpine/_manifests"
    echo "  cat $REGFS_ROOT/mnt/multi/arch/_tags/latest/manifest.json | jq ."
    echo "  ls -l $REGFS_ROOT/mnt/library/alpine/_tags/edge/rootfs/"
    read -r -p "Press Enter to unmount and clean up... " _ || true
fi
