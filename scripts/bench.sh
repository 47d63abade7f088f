#!/usr/bin/env bash
# scripts/bench.sh — regfs benchmarks, reported as ratios against curl / skopeo
# measured in the same run against the same local registry (127.0.0.1).
#
# Environment:
#   BENCH_SIZE_MB=1024      size of the random test blob in MiB (e.g. 256 for a quick run)
#   BENCH_REPEAT=3          repetitions of every timed measurement; the BEST (fastest) counts
#   BENCH_RANDOM_READS=50   random 4 KiB reads in the random_read section
#   BENCH_TAGS=1000         tags in the tags_listing section
#   BENCH_SEED=42           seed for the random read offsets ($RANDOM)
#   BENCH_SECTIONS="..."    which sections to run, in order (default: all, see SECTIONS)
#   BENCH_MOUNT_OPTS="..."  extra options for every `regfs mount`
#   BENCH_TMPDIR=DIR        where the blob, registry storage and caches go (default $TMPDIR or /tmp)
#
# Adding a section: write a function bench_<name> that mounts with bench_mount,
# measures, calls `report "<one line>"` and bench_unmount; add <name> to SECTIONS.
# Setup shared by several sections (the big blob, the tag repository) is done
# lazily by need_* functions, outside any timed part.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REGFS_ROOT"

SECTIONS=(cold_read warm_read random_read tags_listing peak_rss)

BENCH_SIZE_MB="${BENCH_SIZE_MB:-1024}"
BENCH_REPEAT="${BENCH_REPEAT:-3}"
BENCH_RANDOM_READS="${BENCH_RANDOM_READS:-50}"
BENCH_TAGS="${BENCH_TAGS:-1000}"
BENCH_SEED="${BENCH_SEED:-42}"
read -r -a MOUNT_OPTS <<<"${BENCH_MOUNT_OPTS:-}"
read -r -a RUN_SECTIONS <<<"${BENCH_SECTIONS:-${SECTIONS[*]}}"

if ((BENCH_SIZE_MB % 1024 == 0)); then
    SIZE_LABEL="$((BENCH_SIZE_MB / 1024)) GiB"
else
    SIZE_LABEL="$BENCH_SIZE_MB MiB"
fi

WORK=""
RESULTS=()
MNT=""
CACHE=""
MOUNT_SEQ=0

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $REGFS_MOUNTPOINT ]] && regfs_unmount
    stop_registry
    [[ -n $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# report LINE — print a result now and again in the summary.
report() {
    printf '%s\n' "$*"
    RESULTS+=("$*")
}

# verdict VALUE OP TARGET — "ok" or "MISSED" (OP is >= or <=, or <).
verdict() {
    if awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
            if (op == ">=") exit !(v >= t); if (op == "<=") exit !(v <= t); exit !(v < t) }'; then
        echo ok
    else
        echo MISSED
    fi
}

# min A B... — the smallest number.
min() { printf '%s\n' "$@" | sort -g | head -n1; }

# bench_mount — a fresh mount (new mountpoint, empty cache dir) in MNT; the
# daemon runs with --foreground in the background so REGFS_MOUNT_PID is its pid.
bench_mount() {
    MOUNT_SEQ=$((MOUNT_SEQ + 1))
    MNT="$WORK/mnt$MOUNT_SEQ"
    CACHE="$WORK/cache$MOUNT_SEQ"
    regfs_mount_fg "$MNT" "$CACHE" "$WORK/regfs$MOUNT_SEQ.log" --log-level warn "${MOUNT_OPTS[@]}" ||
        die "regfs mount failed (log: $WORK/regfs$MOUNT_SEQ.log)"
}

# bench_unmount — unmount, drop the cache dir, flush its dirty pages.
bench_unmount() {
    regfs_unmount
    rm -rf "$CACHE"
    rmdir "$MNT" 2>/dev/null || true
    sync
}

stat_of() { regfs_stat "$MNT" "$1"; }

# ---------------------------------------------------------------- shared setup

BLOB_REPO=bench/big
BLOB_FILE=""
BLOB_DIGEST=""
BLOB_BYTES=0

# need_blob — a random BENCH_SIZE_MB blob pushed once to bench/big (plus an image
# manifest that references it, so it is listed and its size comes from a descriptor).
need_blob() {
    [[ -n $BLOB_DIGEST ]] && return 0
    section "Setup: random $SIZE_LABEL blob, pushed to $BLOB_REPO"
    BLOB_FILE="$WORK/blob"
    head -c "${BENCH_SIZE_MB}M" /dev/urandom >"$BLOB_FILE"
    BLOB_BYTES="$(file_size "$BLOB_FILE")"
    BLOB_DIGEST="$(blob_digest "$BLOB_FILE")"
    push_blob "$BLOB_REPO" "$BLOB_FILE" "$BLOB_DIGEST" >/dev/null
    local cfg="$WORK/big-config.json" man="$WORK/big-manifest.json" cd
    jq -cn --arg d "$BLOB_DIGEST" \
        '{architecture: "amd64", os: "linux", rootfs: {type: "layers", diff_ids: [$d]}}' >"$cfg"
    cd="$(push_blob "$BLOB_REPO" "$cfg")"
    jq -cn --arg cd "$cd" --argjson cs "$(file_size "$cfg")" --arg d "$BLOB_DIGEST" --argjson s "$BLOB_BYTES" \
        --arg mt "$MT_OCI_MANIFEST" --arg cmt "$MT_OCI_CONFIG" --arg lmt "$MT_OCI_LAYER_TAR" '
        {schemaVersion: 2, mediaType: $mt, config: {mediaType: $cmt, digest: $cd, size: $cs},
         layers: [{mediaType: $lmt, digest: $d, size: $s}]}' >"$man"
    push_manifest "$BLOB_REPO" latest "$MT_OCI_MANIFEST" "$man" >/dev/null
    echo "blob $BLOB_DIGEST ($BLOB_BYTES bytes) in $BLOB_REPO"
}

blob_url() { printf '%s/v2/%s/blobs/%s\n' "$REGISTRY_URL" "$BLOB_REPO" "$BLOB_DIGEST"; }
blob_path() { printf '%s/%s/_blobs/%s\n' "$MNT" "$BLOB_REPO" "$BLOB_DIGEST"; }

# time_curl_blob — best of BENCH_REPEAT `curl -s -o /dev/null` of the blob, seconds.
time_curl_blob() {
    local i t0 times=()
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        t0="$(now)"
        curl -sf -o /dev/null "$(blob_url)"
        times+=("$(elapsed "$t0")")
    done
    min "${times[@]}"
}

TAG_REPO=bench/tags
TAGS_READY=0

# need_tags — one small image in bench/tags tagged BENCH_TAGS times (t0001...).
need_tags() {
    ((TAGS_READY)) && return 0
    section "Setup: $BENCH_TAGS tags in $TAG_REPO"
    local layer d
    layer="$(make_layer "$WORK/tags-layer.tar.gz" "bench tags")"
    d="$(make_image "$TAG_REPO" - "$layer")"
    tag_many "$TAG_REPO" "$MT_OCI_MANIFEST" "$REGISTRY_DIR/build/manifests/${d#sha256:}.json" t "$BENCH_TAGS"
    echo "$TAG_REPO: $BENCH_TAGS tags on $d"
    TAGS_READY=1
}

# ---------------------------------------------------------------- sections

# a. cold sequential read: fresh mount + empty cache each time vs curl.
bench_cold_read() {
    need_blob
    section "a. cold sequential read, $SIZE_LABEL (best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 times=() tr tc ratio fetched=""
    local path
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        path="$(blob_path)"
        t0="$(now)"
        cat "$path" >/dev/null
        times+=("$(elapsed "$t0")")
        fetched="$(stat_of bytes_fetched)"
        echo "  run $((i + 1)): regfs ${times[-1]} s, bytes_fetched $fetched, requests $(stat_of requests)"
        bench_unmount
    done
    tr="$(min "${times[@]}")"
    tc="$(time_curl_blob)"
    ratio="$(calc "$tc / $tr" 2)"
    report "cold sequential read $SIZE_LABEL: regfs $tr s ($(calc "$BENCH_SIZE_MB / $tr" 0) MiB/s), curl $tc s ($(calc "$BENCH_SIZE_MB / $tc" 0) MiB/s), ratio (regfs/curl throughput) ${ratio}x (target >= 0.6x) $(verdict "$ratio" '>=' 0.6)"
}

# b. warm re-read through the same mount vs curl.
bench_warm_read() {
    need_blob
    section "b. warm re-read, $SIZE_LABEL (same mount after one full read; best of $BENCH_REPEAT)"
    local i t0 times=() tr tc ratio f0 f1 got
    local path
    bench_mount
    path="$(blob_path)"
    cat "$path" >/dev/null
    f0="$(stat_of bytes_fetched)"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        t0="$(now)"
        cat "$path" >/dev/null
        times+=("$(elapsed "$t0")")
    done
    f1="$(stat_of bytes_fetched)"
    got="sha256:$(sha256sum "$path" | cut -d' ' -f1)"
    echo "  warm reads fetched $((f1 - f0)) bytes from the registry; content check: $([[ $got == "$BLOB_DIGEST" ]] && echo ok || echo "MISMATCH ($got)")"
    bench_unmount
    tr="$(min "${times[@]}")"
    tc="$(time_curl_blob)"
    ratio="$(calc "$tc / $tr" 2)"
    report "warm re-read $SIZE_LABEL: regfs $tr s ($(calc "$BENCH_SIZE_MB / $tr" 0) MiB/s), curl $tc s ($(calc "$BENCH_SIZE_MB / $tc" 0) MiB/s), ratio (regfs/curl throughput) ${ratio}x (target >= 1.5x) $(verdict "$ratio" '>=' 1.5)"
    [[ $got == "$BLOB_DIGEST" ]] || report "warm re-read: CONTENT MISMATCH: read $got, expected $BLOB_DIGEST"
}

# c. registry bytes per random 4 KiB read into an uncached blob.
bench_random_read() {
    need_blob
    local n="$BENCH_RANDOM_READS" nblocks i blk f0 f1 r0 r1 t0 t per
    section "c. $n random 4 KiB reads into an uncached $SIZE_LABEL blob (fresh mount, dd, seed $BENCH_SEED)"
    nblocks=$((BLOB_BYTES / 4096))
    local path
    bench_mount
    path="$(blob_path)"
    stat "$path" >/dev/null
    f0="$(stat_of bytes_fetched)"
    r0="$(stat_of requests)"
    RANDOM="$BENCH_SEED"
    t0="$(now)"
    for ((i = 0; i < n; i++)); do
        blk=$((((RANDOM << 15) | RANDOM) % nblocks))
        dd if="$path" of=/dev/null bs=4096 count=1 skip="$blk" status=none
    done
    t="$(elapsed "$t0")"
    sleep 1 # let any prefetch that was started finish, so it is counted
    f1="$(stat_of bytes_fetched)"
    r1="$(stat_of requests)"
    bench_unmount
    per="$(calc "($f1 - $f0) / $n / 1048576")"
    report "random 4 KiB reads ($n) into uncached $SIZE_LABEL blob: $per MiB fetched per read ($(calc "($f1 - $f0) / 1048576" 1) MiB total, $((r1 - r0)) requests, $(calc "$t * 1000 / $n" 1) ms per read) (target <= 2 MiB) $(verdict "$per" '<=' 2)"
}

# d. ls -l of a repository's _tags with BENCH_TAGS tags, cold and warm.
bench_tags_listing() {
    need_tags
    section "d. ls -l _tags with $BENCH_TAGS tags (best of $BENCH_REPEAT; cold = fresh mount)"
    local i t0 cold=() warm=() r0 r1 r2 rc rw n tc ts cfg
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        r0="$(stat_of requests)"
        t0="$(now)"
        ls -l "$MNT/$TAG_REPO/_tags" >/dev/null
        cold+=("$(elapsed "$t0")")
        r1="$(stat_of requests)"
        t0="$(now)"
        ls -l "$MNT/$TAG_REPO/_tags" >/dev/null
        warm+=("$(elapsed "$t0")")
        r2="$(stat_of requests)"
        n="$(find "$MNT/$TAG_REPO/_tags/" -mindepth 1 -maxdepth 1 -type l | wc -l)"
        echo "  run $((i + 1)): cold ${cold[-1]} s ($((r1 - r0)) requests), warm ${warm[-1]} s ($((r2 - r1)) requests), $n symlinks listed"
        bench_unmount
    done
    rc=$((r1 - r0))
    rw=$((r2 - r1))
    # Baselines: the tag list alone (skopeo list-tags), and the tag list plus
    # one manifest HEAD per tag over one connection (what ls -l needs to know).
    local skopeo_times=() curl_times=() heads_ok=0
    cfg="$WORK/heads.curl"
    : >"$cfg"
    for ((i = 1; i <= BENCH_TAGS; i++)); do
        printf 'url = "%s/v2/%s/manifests/t%04d"\noutput = "/dev/null"\n' "$REGISTRY_URL" "$TAG_REPO" "$i" >>"$cfg"
    done
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        t0="$(now)"
        skopeo list-tags --tls-verify=false "docker://$REGISTRY_HOST/$TAG_REPO" >/dev/null
        skopeo_times+=("$(elapsed "$t0")")
        t0="$(now)"
        curl -sf -o /dev/null "$REGISTRY_URL/v2/$TAG_REPO/tags/list"
        heads_ok="$(curl -s -I -H "Accept: $MT_OCI_MANIFEST" -w '%{http_code}\n' -K "$cfg" | grep -c '^200$' || true)"
        curl_times+=("$(elapsed "$t0")")
    done
    ((heads_ok == BENCH_TAGS)) || log "warning: only $heads_ok of $BENCH_TAGS manifest HEADs answered 200"
    ts="$(min "${skopeo_times[@]}")"
    tc="$(min "${curl_times[@]}")"
    report "ls -l _tags ($BENCH_TAGS tags): regfs cold $(min "${cold[@]}") s ($rc requests), warm $(min "${warm[@]}") s ($rw requests); skopeo list-tags $ts s; curl tags/list + $BENCH_TAGS HEADs $tc s; ratio cold (curl/regfs time) $(calc "$tc / $(min "${cold[@]}")" 2)x; $n of $BENCH_TAGS tags listed $([[ $n -eq $BENCH_TAGS ]] && echo ok || echo MISSED)"
}

# e. daemon peak RSS (VmHWM) after reading the whole blob once.
bench_peak_rss() {
    need_blob
    section "e. daemon peak RSS after a cold sequential read of $SIZE_LABEL"
    local hwm rss name pid
    bench_mount
    pid="$REGFS_MOUNT_PID"
    name="$(awk '$1 == "Name:" { print $2 }' "/proc/$pid/status")"
    cat "$(blob_path)" >/dev/null
    hwm="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$pid/status")"
    rss="$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status")"
    bench_unmount
    report "daemon peak RSS after reading $SIZE_LABEL: $(calc "$hwm / 1024" 1) MiB VmHWM, $(calc "$rss / 1024" 1) MiB VmRSS at the end (pid $pid, $name) (target < 100 MiB) $(verdict "$(calc "$hwm / 1024")" '<' 100)"
}

# ---------------------------------------------------------------- main

for s in "${RUN_SECTIONS[@]}"; do
    declare -F "bench_$s" >/dev/null || die "unknown section '$s' (known: ${SECTIONS[*]})"
done

section "Setup: packages, release build, registry"
ensure_packages
ensure_cargo
ensure_fuse
cargo build --release
WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/regfs-bench.XXXXXX")"
REGFS_REGISTRY_ACCESSLOG_DISABLED=true start_registry "$WORK/registry"

for s in "${RUN_SECTIONS[@]}"; do
    "bench_$s"
done

section "Summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $("$REGFS_BIN" --version 2>/dev/null || echo regfs), blob $SIZE_LABEL, best of $BENCH_REPEAT)"
printf '%s\n' "${RESULTS[@]}"
