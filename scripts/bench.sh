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
#   BENCH_BACKUP_TAGS=120   tags in the backup sections (backup_rsync, restore_rsync)
#   BENCH_BACKUP_IMAGES=4   distinct images those tags point at
#   BENCH_BACKUP_LAYER_MB=4 size of the base layer the images share (each also has its own 1 MiB layer)
#   BENCH_PRESSURE_MB=3072  junk written to the cache filesystem before each read of cold_read_pressure
#   BENCH_SECTIONS="..."    which sections to run, in order (default: all, see SECTIONS),
#                           e.g. BENCH_SECTIONS=upload BENCH_SIZE_MB=1024 bash scripts/bench.sh
#   BENCH_MOUNT_OPTS="..."  extra options for every `regfs mount`
#   BENCH_TMPDIR=DIR        where the blob, registry storage and caches go (default $TMPDIR or /tmp)
#
# Far registry (the far_* sections): regfs and the baseline both go through
# examples/farproxy.rs, a loopback proxy that delays and throttles (no netem here):
#   BENCH_FAR_RTT_MS=40          round trip added to every request
#   BENCH_FAR_CONNECT_MS=40      added once per new connection (the TCP handshake)
#   BENCH_FAR_MBPS=25            cap per connection and direction, MB/s (0 = none)
#   BENCH_FAR_TAGS=1000          tags listed by far_tags (repository bench/fartags)
#   BENCH_FAR_TAG_PARALLEL=64    HEADs curl keeps in flight in far_tags (regfs resolves
#                                TAG_CONCURRENCY = 64 tags at a time: src/core/view.rs)
#   BENCH_FAR_BACKUP_TAGS=20     tags in far_backup's repository (same image mix as backup_rsync)
#   BENCH_FAR_IMAGE_LAYERS=4     layers of the image archive far_upload_image uploads
#   BENCH_FAR_IMAGE_LAYER_MB=64  MiB of random data in each of those layers
# Metadata at scale (the scale section, on loopback, no proxy):
#   BENCH_SCALE_STEPS="1000 10000"  repositories in the registry and tags in one repository
#                                   at each step (growth is reported between the first and last)
#   BENCH_SCALE_REPEAT=1            repetitions per step (best counts, median shown)
#   BENCH_SCALE_TIMEOUT=120         seconds any one timed regfs command may take; a command
#                                   that runs out is reported as "> N s" and MISSED
#   BENCH_SCALE_RSS_REPOS=100       repositories of 1,000 tags listed for the peak-RSS figure
#                                   (copies of scale/tags-1000 made in the registry's storage)
#
# Image contents (the contents_* sections, issue 11): a 5-layer image made from this
# machine's own files (etc, usr/include, usr/share/{doc,man,perl,vim,i18n}, usr/bin,
# usr/share/locale; gzip -6, about 900 MB of tar), and a one-layer image of
# BENCH_CONTENTS_FILES empty files for memory:
#   BENCH_CONTENTS_FILES=200000
#
# Adding a section: write a function bench_<name> that mounts with bench_mount,
# measures, calls `report "<one line>"` and bench_unmount; add <name> to SECTIONS.
# Setup shared by several sections (the big blob, the tag repository) is done
# lazily by need_* functions, outside any timed part.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REGFS_ROOT"

SECTIONS=(cold_read cold_read_pressure warm_read random_read tags_listing peak_rss backup_rsync restore_rsync export_tar upload
    far_cold_read far_ttfb far_tags far_export far_upload far_upload_image far_backup scale
    contents_cold_list contents_warm_read contents_cat_all contents_rss)

BENCH_SIZE_MB="${BENCH_SIZE_MB:-1024}"
BENCH_REPEAT="${BENCH_REPEAT:-3}"
BENCH_RANDOM_READS="${BENCH_RANDOM_READS:-50}"
BENCH_TAGS="${BENCH_TAGS:-1000}"
BENCH_SEED="${BENCH_SEED:-42}"
BENCH_BACKUP_TAGS="${BENCH_BACKUP_TAGS:-120}"
BENCH_BACKUP_IMAGES="${BENCH_BACKUP_IMAGES:-4}"
BENCH_BACKUP_LAYER_MB="${BENCH_BACKUP_LAYER_MB:-4}"
BENCH_PRESSURE_MB="${BENCH_PRESSURE_MB:-3072}"
BENCH_FAR_RTT_MS="${BENCH_FAR_RTT_MS:-40}"
BENCH_FAR_CONNECT_MS="${BENCH_FAR_CONNECT_MS:-40}"
BENCH_FAR_MBPS="${BENCH_FAR_MBPS:-25}"
BENCH_FAR_TAGS="${BENCH_FAR_TAGS:-1000}"
BENCH_FAR_TAG_PARALLEL="${BENCH_FAR_TAG_PARALLEL:-64}"
BENCH_FAR_BACKUP_TAGS="${BENCH_FAR_BACKUP_TAGS:-20}"
BENCH_FAR_IMAGE_LAYERS="${BENCH_FAR_IMAGE_LAYERS:-4}"
BENCH_FAR_IMAGE_LAYER_MB="${BENCH_FAR_IMAGE_LAYER_MB:-64}"
read -r -a SCALE_STEPS <<<"${BENCH_SCALE_STEPS:-1000 10000}"
BENCH_SCALE_REPEAT="${BENCH_SCALE_REPEAT:-1}"
BENCH_SCALE_TIMEOUT="${BENCH_SCALE_TIMEOUT:-120}"
BENCH_SCALE_RSS_REPOS="${BENCH_SCALE_RSS_REPOS:-100}"
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
    stop_far_proxy
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

# figure NAME REGFS BASELINE RATIO TARGET VERDICT — one row of the summary table
# printed at the end (every figure of the run with its ratio and target).
FIGURES=()
figure() {
    local IFS='|'
    FIGURES+=("$*")
}

# print_figures — the summary table: figure, regfs, baseline, ratio, target, met/missed.
print_figures() {
    ((${#FIGURES[@]})) || return 0
    local met=0 missed=0 row
    for row in "${FIGURES[@]}"; do
        case "${row##*|}" in ok) met=$((met + 1)) ;; MISSED) missed=$((missed + 1)) ;; esac
    done
    echo
    echo "Figures ($met met, $missed missed; ratio and regfs/baseline are best of the repetitions):"
    {
        echo "figure|regfs|baseline|ratio|target|met"
        printf '%s\n' "${FIGURES[@]}"
    } | awk -F'|' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
        END { for (r = 1; r <= n; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf("%-" w[i] "s", c[r, i]) (i < nf ? " | " : ""); print line
            if (r == 1) { line = ""; for (i = 1; i <= nf; i++) { d = ""; for (k = 0; k < w[i]; k++) d = d "-"; line = line d (i < nf ? "-|-" : "") } print line } } }'
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

# median A B... — the middle number (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# best_med A B... — "best X s, median Y s".
best_med() { printf 'best %s s, median %s s' "$(min "$@")" "$(median "$@")"; }

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
    local i t0 times=() tc=() tr ratio fetched=""
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
        t0="$(now)"
        curl -sf -o /dev/null "$(blob_url)"
        tc+=("$(elapsed "$t0")")
        echo "         curl ${tc[-1]} s"
    done
    tr="$(min "${times[@]}")"
    ratio="$(calc "$(min "${tc[@]}") / $tr" 2)"
    figure "loopback cold read $SIZE_LABEL (throughput)" "$tr s" "curl $(min "${tc[@]}") s" "${ratio}x" ">= 0.6x" "$(verdict "$ratio" '>=' 0.6)"
    report "cold sequential read $SIZE_LABEL: regfs $(best_med "${times[@]}") ($(calc "$BENCH_SIZE_MB / $tr" 0) MiB/s), curl $(best_med "${tc[@]}") ($(calc "$BENCH_SIZE_MB / $(min "${tc[@]}")" 0) MiB/s), ratio (regfs/curl throughput, best) ${ratio}x (target >= 0.6x) $(verdict "$ratio" '>=' 0.6)"
}

# write_junk — BENCH_PRESSURE_MB of data written (not synced) to a file on the
# cache's filesystem: the dirty pages a build or an image pull leaves behind.
write_junk() {
    dd if=/dev/zero of="$WORK/junk" bs=1M count="$BENCH_PRESSURE_MB" status=none
}

# a2. cold sequential read right after BENCH_PRESSURE_MB were written to the
# cache filesystem (dirty pages throttle every writer there), vs curl in the
# same state (junk written just before it too). The junk goes after each read.
bench_cold_read_pressure() {
    need_blob
    section "a2. cold sequential read, $SIZE_LABEL, right after $BENCH_PRESSURE_MB MiB were written to the cache filesystem (best of $BENCH_REPEAT)"
    local i t0 times=() tc=() tr ratio dirty
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        write_junk
        dirty="$(awk '$1 == "Dirty:" { print int($2 / 1024) }' /proc/meminfo)"
        t0="$(now)"
        cat "$(blob_path)" >/dev/null
        times+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs ${times[-1]} s (Dirty: $dirty MiB before the read)"
        rm -f "$WORK/junk"
        bench_unmount
        write_junk
        t0="$(now)"
        curl -sf -o /dev/null "$(blob_url)"
        tc+=("$(elapsed "$t0")")
        echo "         curl ${tc[-1]} s"
        rm -f "$WORK/junk"
        sync
    done
    tr="$(min "${times[@]}")"
    ratio="$(calc "$(min "${tc[@]}") / $tr" 2)"
    figure "loopback cold read $SIZE_LABEL after $BENCH_PRESSURE_MB MiB written (throughput)" "$tr s" "curl $(min "${tc[@]}") s" "${ratio}x" ">= 0.5x" "$(verdict "$ratio" '>=' 0.5)"
    report "cold sequential read $SIZE_LABEL after $BENCH_PRESSURE_MB MiB written to the cache filesystem: regfs $(best_med "${times[@]}") ($(calc "$BENCH_SIZE_MB / $tr" 0) MiB/s), curl $(best_med "${tc[@]}") ($(calc "$BENCH_SIZE_MB / $(min "${tc[@]}")" 0) MiB/s), ratio (regfs/curl throughput, best) ${ratio}x (target >= 0.5x) $(verdict "$ratio" '>=' 0.5)"
}

# b. warm re-read through the same mount vs curl: with FUSE passthrough (the
# kernel reads the verified cache file; root and Linux >= 6.9) and without
# (REGFS_NO_PASSTHROUGH=1: every read through the daemon). `cat` of the
# blob's local copy (in the page cache) is timed beside them: the ceiling of
# any warm read on this machine, printed next to the figure.
bench_warm_read() {
    need_blob
    local mode
    for mode in passthrough daemon; do
        section "b. warm re-read, $SIZE_LABEL, reads via $mode (same mount after one full read; best of $BENCH_REPEAT)"
        local i t0 times=() tc=() tl=() tr ratio f0 f1 got np=0 opens
        [[ $mode == daemon ]] && np=1
        REGFS_NO_PASSTHROUGH=$np bench_mount
        local path
        path="$(blob_path)"
        cat "$path" >/dev/null
        sleep 0.2 # the kernel releases the first handle after close returns
        f0="$(stat_of bytes_fetched)"
        cat "$BLOB_FILE" >/dev/null # the local copy into the page cache, for the ceiling
        for ((i = 0; i < BENCH_REPEAT; i++)); do
            t0="$(now)"
            cat "$path" >/dev/null
            times+=("$(elapsed "$t0")")
            t0="$(now)"
            curl -sf -o /dev/null "$(blob_url)"
            tc+=("$(elapsed "$t0")")
            t0="$(now)"
            cat "$BLOB_FILE" >/dev/null
            tl+=("$(elapsed "$t0")")
        done
        f1="$(stat_of bytes_fetched)"
        opens="$(stat_of fuse_passthrough_opens)"
        got="sha256:$(sha256sum "$path" | cut -d' ' -f1)"
        echo "  warm reads fetched $((f1 - f0)) bytes from the registry; passthrough opens $opens; content check: $([[ $got == "$BLOB_DIGEST" ]] && echo ok || echo "MISMATCH ($got)")"
        bench_unmount
        tr="$(min "${times[@]}")"
        ratio="$(calc "$(min "${tc[@]}") / $tr" 2)"
        figure "warm re-read $SIZE_LABEL via $mode (throughput)" "$tr s" "curl $(min "${tc[@]}") s" "${ratio}x" ">= 4x" "$(verdict "$ratio" '>=' 4)"
        report "warm re-read $SIZE_LABEL via $mode ($opens passthrough opens): regfs $(best_med "${times[@]}") ($(calc "$BENCH_SIZE_MB / $tr" 0) MiB/s), curl $(best_med "${tc[@]}") ($(calc "$BENCH_SIZE_MB / $(min "${tc[@]}")" 0) MiB/s), ratio (regfs/curl throughput, best) ${ratio}x (target >= 4x) $(verdict "$ratio" '>=' 4); the ceiling, cat of a local page-cached copy: $(best_med "${tl[@]}") (regfs at $(calc "$(min "${tl[@]}") / $tr" 2)x of it, curl at $(calc "$(min "${tl[@]}") / $(min "${tc[@]}")" 2)x)"
        [[ $got == "$BLOB_DIGEST" ]] || report "warm re-read via $mode: CONTENT MISMATCH: read $got, expected $BLOB_DIGEST"
    done
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

# ---------------------------------------------------------------- issue 5 / 6: backups and archives

BACKUP_REPO=bench/backup
BACKUP_READY=0
BACKUP_COPY=""
SKOPEO_DIR=""
RESTORE_SEQ=0

# make_big_layer OUT MIB NAME — a reproducible gzip tar holding MIB MiB of random
# data (incompressible, so the layer is about MIB MiB). Prints OUT.
make_big_layer() {
    local out="${1:?}" mib="${2:?}" name="${3:?}" d
    d="$(mktemp -d "$WORK/layer.XXXXXX")"
    mkdir -p "$d/opt/$name"
    head -c "${mib}M" /dev/urandom >"$d/opt/$name/data.bin"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf - . | gzip -n -1 >"$out"
    rm -rf "$d"
    printf '%s\n' "$out"
}

# need_backup_repo — BENCH_BACKUP_TAGS tags in bench/backup over BENCH_BACKUP_IMAGES
# images; every image has a shared base layer of BENCH_BACKUP_LAYER_MB MiB, its own
# 1 MiB layer and a small text layer (real gzip tars; configs list their diff_ids).
need_backup_repo() {
    ((BACKUP_READY)) && return 0
    build_backup_repo "$BACKUP_REPO" "$BENCH_BACKUP_TAGS"
    BACKUP_READY=1
}

# build_backup_repo REPO TAGS — the backup image mix (see need_backup_repo) with TAGS tags in REPO.
build_backup_repo() {
    local repo="${1:?}" tags="${2:?}"
    local n_img="$BENCH_BACKUP_IMAGES" per i d base own small prefix count done=0 letters=abcdefghijklmnopqrstuvwxyz
    section "Setup: $tags tags over $n_img images (${BENCH_BACKUP_LAYER_MB} MiB shared base layer + 1 MiB own layer each) in $repo"
    base="$(make_big_layer "$WORK/backup-base.tar.gz" "$BENCH_BACKUP_LAYER_MB" base)"
    per=$(((tags + n_img - 1) / n_img))
    for ((i = 0; i < n_img; i++)); do
        own="$(make_big_layer "$WORK/backup-own$i.tar.gz" 1 "own$i")"
        small="$(make_layer "$WORK/backup-small$i.tar.gz" "backup image $i")"
        d="$(make_image "$repo" - "$base" "$own" "$small")"
        prefix="${letters:i%26:1}" # tags a0001.., b0001.., ...
        count=$((tags - done < per ? tags - done : per))
        ((count > 0)) || break
        tag_many "$repo" "$MT_OCI_MANIFEST" "$REGISTRY_DIR/build/manifests/${d#sha256:}.json" "$prefix" "$count"
        done=$((done + count))
    done
    echo "$repo: $(curl -sf "$REGISTRY_URL/v2/$repo/tags/list" | jq '.tags | length') tags," \
        "$(du -sm "$REGISTRY_DIR/storage" | cut -f1) MiB in the registry"
}

# tag_count REPO — number of tags the registry lists for REPO (0 when unknown).
tag_count() {
    curl -s "$REGISTRY_URL/v2/${1:?}/tags/list" | jq '(.tags // []) | length' 2>/dev/null || echo 0
}

# wait_tags REPO N — poll until REPO lists N tags (deadline 120 s); seconds waited.
wait_tags() {
    local repo="${1:?}" n="${2:?}" t0 i
    t0="$(now)"
    for ((i = 0; i < 1200; i++)); do
        [[ "$(tag_count "$repo")" -ge $n ]] && break
        sleep 0.1
    done
    [[ "$(tag_count "$repo")" -ge $n ]] || log "warning: $repo has $(tag_count "$repo") of $n tags after 120 s"
    elapsed "$t0"
}

# rsync_transferred STATS_FILE — "Number of regular files transferred" from rsync --stats.
rsync_transferred() { awk -F': ' '/Number of regular files transferred/ { gsub(",", "", $2); print $2 }' "${1:?}"; }

# f. cold rsync of a repository vs skopeo sync --dest dir; incremental runs.
bench_backup_rsync() {
    need_backup_repo
    section "f. rsync -a backup of $BACKUP_REPO ($BENCH_BACKUP_TAGS tags; best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 cold=() sk=() inc_same=() inc_fresh=() g0 g1 tr ts tx bk="$WORK/backup-copy" st="$WORK/rsync-stats"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        rm -rf "$bk"
        bench_mount
        t0="$(now)"
        rsync -a "$MNT/$BACKUP_REPO/" "$bk/"
        cold+=("$(elapsed "$t0")")
        g0="$(stat_of requests_blob_get)"
        t0="$(now)"
        rsync -a --stats "$MNT/$BACKUP_REPO/" "$bk/" >"$st"
        inc_same+=("$(elapsed "$t0")")
        tx="$(rsync_transferred "$st")"
        g1="$(stat_of requests_blob_get)"
        echo "  run $((i + 1)): cold ${cold[-1]} s ($(stat_of requests) requests, $(calc "$(stat_of bytes_fetched) / 1048576" 1) MiB fetched," \
            "$(du -sm "$bk" | cut -f1) MiB copied); incremental (same mount) ${inc_same[-1]} s, $tx files transferred, $((g1 - g0)) blob GETs"
        bench_unmount
        # The nightly case: a new mount (empty cache) against yesterday's copy.
        bench_mount
        t0="$(now)"
        rsync -a --stats "$MNT/$BACKUP_REPO/" "$bk/" >"$st"
        inc_fresh+=("$(elapsed "$t0")")
        echo "         incremental (fresh mount, empty cache) ${inc_fresh[-1]} s, $(rsync_transferred "$st") files transferred," \
            "$(stat_of requests_blob_get) blob GETs, $(stat_of requests) requests"
        bench_unmount
    done
    BACKUP_COPY="$bk"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        rm -rf "$WORK/skopeo-sync"
        t0="$(now)"
        skopeo sync --src docker --dest dir --src-tls-verify=false "$REGISTRY_HOST/$BACKUP_REPO" "$WORK/skopeo-sync/" >/dev/null 2>&1 ||
            die "skopeo sync --src docker failed"
        sk+=("$(elapsed "$t0")")
        echo "  skopeo sync run $((i + 1)): ${sk[-1]} s ($(du -sm "$WORK/skopeo-sync" | cut -f1) MiB written)"
    done
    SKOPEO_DIR="$WORK/skopeo-sync"
    tr="$(min "${cold[@]}")"
    ts="$(min "${sk[@]}")"
    report "cold rsync -a of $BENCH_BACKUP_TAGS tags: regfs $tr s, skopeo sync --src docker --dest dir $ts s, ratio (regfs/skopeo time) $(calc "$tr / $ts" 2)x (target <= 1.0x) $(verdict "$(calc "$tr / $ts")" '<=' 1.0)"
    report "incremental rsync -a of $BENCH_BACKUP_TAGS tags (nothing changed): same mount $(min "${inc_same[@]}") s, fresh mount + empty cache $(min "${inc_fresh[@]}") s, $tx files transferred (target < 2 s) $(verdict "$(min "${inc_fresh[@]}")" '<' 2)"
}

# g. restore: rsync the backup into a new repository vs skopeo sync --src dir back.
bench_restore_rsync() {
    need_backup_repo
    if [[ -z $BACKUP_COPY ]]; then
        section "Setup: a backup copy of $BACKUP_REPO"
        bench_mount
        BACKUP_COPY="$WORK/backup-copy"
        rsync -a "$MNT/$BACKUP_REPO/" "$BACKUP_COPY/"
        bench_unmount
    fi
    if [[ -z $SKOPEO_DIR ]]; then
        SKOPEO_DIR="$WORK/skopeo-sync"
        skopeo sync --src docker --dest dir --src-tls-verify=false "$REGISTRY_HOST/$BACKUP_REPO" "$SKOPEO_DIR/" >/dev/null 2>&1 ||
            die "skopeo sync --src docker failed"
    fi
    section "g. restore of $BENCH_BACKUP_TAGS tags into a new repository of the same registry (best of $BENCH_REPEAT)"
    local i t0 t_rsync t_tags repo regfs=() sk=() pushed tr ts
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        RESTORE_SEQ=$((RESTORE_SEQ + 1))
        repo="bench/restore$RESTORE_SEQ"
        bench_mount
        mkdir -p "$MNT/$repo"
        t0="$(now)"
        rsync -a "$BACKUP_COPY/" "$MNT/$repo/" || log "warning: rsync restore exited $?"
        t_rsync="$(elapsed "$t0")"
        wait_tags "$repo" "$BENCH_BACKUP_TAGS" >/dev/null
        t_tags="$(elapsed "$t0")"
        pushed="$(stat_of bytes_pushed)"
        echo "  run $((i + 1)): rsync exited after $t_rsync s, all $(tag_count "$repo") tags listed after $t_tags s;" \
            "$(stat_of requests_manifest_put) manifest PUTs, $(stat_of requests_blob_push) blob pushes, $pushed bytes uploaded"
        regfs+=("$t_tags")
        bench_unmount
        t0="$(now)"
        skopeo sync --src dir --dest docker --dest-tls-verify=false "$SKOPEO_DIR/" "$REGISTRY_HOST/bench/skrestore$RESTORE_SEQ" >/dev/null 2>&1 ||
            die "skopeo sync --src dir failed"
        sk+=("$(elapsed "$t0")")
        echo "         skopeo sync --src dir --dest docker: ${sk[-1]} s ($(tag_count "bench/skrestore$RESTORE_SEQ/backup") tags)"
    done
    tr="$(min "${regfs[@]}")"
    ts="$(min "${sk[@]}")"
    report "restore of $BENCH_BACKUP_TAGS tags (rsync into a new repository, until every tag is listed): regfs $tr s, skopeo sync --src dir --dest docker $ts s, ratio (regfs/skopeo time) $(calc "$tr / $ts" 2)x"
}

# h. _export/<tag>.tar of an image with a BENCH_SIZE_MB layer vs skopeo copy to docker-archive.
bench_export_tar() {
    need_blob
    section "h. cat _export/latest.tar of an image with a $SIZE_LABEL layer (best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 regfs=() sk=() size members tr ts x="$WORK/skopeo-archive.tar"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        size="$(stat -c %s "$MNT/$BLOB_REPO/_export/latest.tar")"
        t0="$(now)"
        cat "$MNT/$BLOB_REPO/_export/latest.tar" >/dev/null
        regfs+=("$(elapsed "$t0")")
        members="$(tar -tf "$MNT/$BLOB_REPO/_export/latest.tar" | tr '\n' ' ')"
        echo "  run $((i + 1)): regfs ${regfs[-1]} s, $size bytes, $(calc "$(stat_of bytes_fetched) / 1048576" 1) MiB fetched"
        bench_unmount
    done
    echo "  members: $members"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        rm -f "$x"
        sync
        t0="$(now)"
        skopeo copy --src-tls-verify=false "docker://$REGISTRY_HOST/$BLOB_REPO:latest" "docker-archive:$x" >/dev/null 2>&1 ||
            die "skopeo copy docker-archive failed"
        sk+=("$(elapsed "$t0")")
        echo "  skopeo run $((i + 1)): ${sk[-1]} s, $(stat -c %s "$x") bytes"
    done
    rm -f "$x"
    tr="$(min "${regfs[@]}")"
    ts="$(min "${sk[@]}")"
    report "_export tar of a $SIZE_LABEL image (cat > /dev/null, cold): regfs $tr s ($(calc "$size / 1048576 / $tr" 0) MiB/s), skopeo copy docker:// docker-archive: $ts s, ratio (regfs/skopeo time) $(calc "$tr / $ts" 2)x (target <= 0.5x) $(verdict "$(calc "$tr / $ts")" '<=' 0.5)"
}

# curl_upload REPO FILE DIGEST — what a plain client does: POST an upload
# session, then one monolithic PUT of the whole file (-T); fails unless 201.
curl_upload() {
    local repo="$1" file="$2" digest="$3" hdr loc code
    hdr="$(curl -sS -o /dev/null -D - -X POST "$REGISTRY_URL/v2/$repo/blobs/uploads/")"
    loc="$(awk 'tolower($1) == "location:" { print $2 }' <<<"$hdr" | tr -d '\r')"
    [[ -n $loc ]] || die "curl_upload: no Location in the POST answer for $repo"
    loc="$(_abs_location "$loc")"
    case "$loc" in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/octet-stream' -H 'Expect:' -T "$file" "$loc")" || code=000
    [[ $code == 201 ]] || die "curl_upload: PUT of $digest to $repo answered HTTP $code"
}

# registry_has_blob REPO DIGEST SIZE — HEAD answers 200 with that Content-Length.
registry_has_blob() {
    local len
    len="$(curl -sf -I "$REGISTRY_URL/v2/$1/blobs/$2" | awk 'tolower($1) == "content-length:" { print $2 }' | tr -d '\r')"
    [[ $len == "$3" ]]
}

# i. upload: cp of a file into MOUNT/repo/_uploads/ (staged, hashed, pushed on
# close: cp returns once the registry has the blob) vs curl's POST + PUT -T of
# a file of the same size. Every upload uses fresh random data the registry
# does not have (so neither side can skip it), in its own repository, and
# regfs runs on a fresh mount (it knows no repository to mount the blob from).
bench_upload() {
    section "i. upload of $SIZE_LABEL: cp into _uploads/ vs curl POST + PUT -T (best of $BENCH_REPEAT; fresh random data, repository and mount each time)"
    local i t0 tr=() tc=() hwms=() f d repo link pid hwm ok=1 best_r best_c ratio
    f="$WORK/upload.bin"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        head -c "${BENCH_SIZE_MB}M" /dev/urandom >"$f"
        d="$(blob_digest "$f")"
        sync
        repo="bench/upload-regfs-$i"
        bench_mount
        pid="$REGFS_MOUNT_PID"
        mkdir -p "$MNT/$repo"
        t0="$(now)"
        cp "$f" "$MNT/$repo/_uploads/blob"
        tr+=("$(elapsed "$t0")")
        hwm="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$pid/status")"
        hwms+=("$hwm")
        link="$(readlink "$MNT/$repo/_uploads/blob" || true)"
        if [[ $link != "../_blobs/$d" ]] || ! registry_has_blob "$repo" "$d" "$(file_size "$f")"; then
            log "upload check failed: _uploads/blob -> '$link', expected ../_blobs/$d (or the registry lacks it)"
            ok=0
        fi
        echo "  run $((i + 1)): regfs cp ${tr[-1]} s, daemon VmHWM $(calc "$hwm / 1024" 1) MiB, bytes_pushed $(stat_of bytes_pushed), blob push requests $(stat_of requests_blob_push)"
        bench_unmount

        head -c "${BENCH_SIZE_MB}M" /dev/urandom >"$f"
        d="$(blob_digest "$f")"
        sync
        repo="bench/upload-curl-$i"
        t0="$(now)"
        curl_upload "$repo" "$f" "$d"
        tc+=("$(elapsed "$t0")")
        registry_has_blob "$repo" "$d" "$(file_size "$f")" || { log "curl upload of $d not in the registry"; ok=0; }
        echo "  run $((i + 1)): curl POST + PUT ${tc[-1]} s"
    done
    rm -f "$f"
    best_r="$(min "${tr[@]}")"
    best_c="$(min "${tc[@]}")"
    ratio="$(calc "$best_c / $best_r" 2)"
    hwm="$(printf '%s\n' "${hwms[@]}" | sort -g | tail -n1)"
    report "upload $SIZE_LABEL: regfs cp into _uploads/ $best_r s ($(calc "$BENCH_SIZE_MB / $best_r" 0) MiB/s), curl POST + PUT $best_c s ($(calc "$BENCH_SIZE_MB / $best_c" 0) MiB/s), ratio (regfs/curl throughput) ${ratio}x (target >= 0.5x) $(verdict "$ratio" '>=' 0.5); daemon peak RSS $(calc "$hwm / 1024" 1) MiB VmHWM (target < 128 MiB) $(verdict "$(calc "$hwm / 1024")" '<' 128)"
    ((ok)) || report "upload $SIZE_LABEL: CONTENT CHECK FAILED (see the log above)"
}

# ---------------------------------------------------------------- issue 13: a far registry

FAR_PID=""
FAR_URL=""
FAR_HOST=""
FAR_STATS=""
FAR_LABEL=""

# need_far — start examples/farproxy.rs in front of the registry: FAR_URL / FAR_HOST
# is the registry as seen from far away (both regfs and the baselines use it).
need_far() {
    [[ -n $FAR_PID ]] && return 0
    local bin="$REGFS_ROOT/target/release/examples/farproxy" i addr=""
    [[ -x $bin ]] || die "no $bin (cargo build --release --example farproxy)"
    FAR_STATS="$WORK/farproxy.stats"
    "$bin" --upstream "$REGISTRY_HOST" --rtt-ms "$BENCH_FAR_RTT_MS" --connect-ms "$BENCH_FAR_CONNECT_MS" \
        --mbps "$BENCH_FAR_MBPS" --stats "$FAR_STATS" >"$WORK/farproxy.out" 2>"$WORK/farproxy.log" &
    FAR_PID=$!
    for ((i = 0; i < 100; i++)); do
        addr="$(sed -n "s/^listening on //p" "$WORK/farproxy.out" 2>/dev/null || true)"
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || die "farproxy did not start (log: $WORK/farproxy.log)"
    FAR_HOST="$addr"
    FAR_URL="http://$addr"
    FAR_LABEL="${BENCH_FAR_RTT_MS} ms RTT + ${BENCH_FAR_CONNECT_MS} ms per connection, ${BENCH_FAR_MBPS} MB/s per connection"
    log "farproxy: $FAR_URL -> $REGISTRY_URL ($FAR_LABEL; pid $FAR_PID)"
}

stop_far_proxy() {
    [[ -n $FAR_PID ]] || return 0
    kill "$FAR_PID" 2>/dev/null || true
    wait "$FAR_PID" 2>/dev/null || true
    FAR_PID=""
}

# far_connections — connections the proxy has accepted so far.
far_connections() { awk '$1 == "connections" { print $2 }' "$FAR_STATS"; }

# far_mount — a fresh mount (as bench_mount) that reaches the registry through the proxy.
far_mount() { REGISTRY_URL="$FAR_URL" bench_mount; }

far_blob_url() { printf '%s/v2/%s/blobs/%s\n' "$FAR_URL" "$BLOB_REPO" "$BLOB_DIGEST"; }

# j. cold sequential read through the proxy vs curl through the same proxy.
bench_far_cold_read() {
    need_blob
    need_far
    section "j. far cold read, $SIZE_LABEL ($FAR_LABEL; best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 c0 times=() tc=() tr ratio
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        far_mount
        c0="$(far_connections)"
        t0="$(now)"
        cat "$(blob_path)" >/dev/null
        times+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs ${times[-1]} s, $(stat_of requests_blob_get) blob GETs, $(stat_of requests) requests," \
            "$(($(far_connections) - c0)) new connections during the read"
        bench_unmount
        t0="$(now)"
        curl -sf -o /dev/null "$(far_blob_url)"
        tc+=("$(elapsed "$t0")")
        echo "         curl ${tc[-1]} s"
    done
    tr="$(min "${times[@]}")"
    ratio="$(calc "$(min "${tc[@]}") / $tr" 2)"
    figure "far cold read $SIZE_LABEL (throughput)" "$tr s" "curl $(min "${tc[@]}") s" "${ratio}x" ">= 4x" "$(verdict "$ratio" '>=' 4)"
    report "far cold read $SIZE_LABEL ($FAR_LABEL): regfs $(best_med "${times[@]}") ($(calc "$BENCH_SIZE_MB / $tr" 1) MiB/s), curl $(best_med "${tc[@]}") ($(calc "$BENCH_SIZE_MB / $(min "${tc[@]}")" 1) MiB/s), ratio (regfs/curl throughput, best) ${ratio}x (target >= 4x) $(verdict "$ratio" '>=' 4)"
}

# k. time to the first 4 KiB of an uncached blob: regfs from a fresh mount
# (lookup of every path component included; and again with the path already
# stat-ed, i.e. the read alone — since the lookup's GET starts fetching the
# first chunk, that one mostly shows the chunk already there) vs a fresh
# `curl -r 0-4095` (new connection).
bench_far_ttfb() {
    need_blob
    need_far
    section "k. far time to first 4 KiB ($FAR_LABEL; best of $BENCH_REPEAT, fresh mount each time)"
    local i t0 c0 path full=() readonly=() tc=() r0 ratio
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        far_mount
        path="$(blob_path)"
        c0="$(far_connections)"
        t0="$(now)"
        head -c 4096 "$path" >/dev/null
        full+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs path + first 4 KiB ${full[-1]} s ($(stat_of requests) requests since the mount: $(stat_of requests_blob_head) blob HEAD, $(stat_of requests_blob_get) blob GET, $(stat_of requests_tags) tags, $(stat_of requests_manifest_get) manifest GET; $(($(far_connections) - c0)) new connections)"
        bench_unmount
        far_mount
        path="$(blob_path)"
        stat "$path" >/dev/null
        r0="$(stat_of requests)"
        c0="$(far_connections)"
        t0="$(now)"
        head -c 4096 "$path" >/dev/null
        readonly+=("$(elapsed "$t0")")
        echo "         regfs first 4 KiB of a stat-ed path ${readonly[-1]} s ($(($(stat_of requests) - r0)) requests, $(($(far_connections) - c0)) new connections)"
        bench_unmount
        t0="$(now)"
        curl -sf -r 0-4095 -o /dev/null "$(far_blob_url)"
        tc+=("$(elapsed "$t0")")
        echo "         curl -r 0-4095 ${tc[-1]} s"
    done
    ratio="$(calc "$(min "${full[@]}") / $(min "${tc[@]}")" 2)"
    figure "far time to first 4 KiB (path lookup + read)" "$(min "${full[@]}") s" "curl -r $(min "${tc[@]}") s" "${ratio}x" "<= 1.3x" "$(verdict "$ratio" '<=' 1.3)"
    report "far time to first 4 KiB ($FAR_LABEL): regfs path lookup + read $(best_med "${full[@]}"), read of a stat-ed path $(best_med "${readonly[@]}"); curl -r 0-4095 $(best_med "${tc[@]}"); ratio (regfs/curl time, best) ${ratio}x (target <= 1.3x) $(verdict "$ratio" '<=' 1.3); stat-ed ratio $(calc "$(min "${readonly[@]}") / $(min "${tc[@]}")" 2)x"
}

FAR_TAG_REPO=bench/fartags
FAR_TAGS_READY=0

# l. ls -l _tags of BENCH_FAR_TAGS tags vs curl: tags/list plus one manifest HEAD
# per tag, on one connection (what a script does) and BENCH_FAR_TAG_PARALLEL in
# parallel on reused connections (as many in flight as regfs keeps).
bench_far_tags() {
    need_far
    if ((!FAR_TAGS_READY)); then
        section "Setup: $BENCH_FAR_TAGS tags in $FAR_TAG_REPO"
        local layer d
        layer="$(make_layer "$WORK/fartags-layer.tar.gz" "bench far tags")"
        d="$(make_image "$FAR_TAG_REPO" - "$layer")"
        tag_many "$FAR_TAG_REPO" "$MT_OCI_MANIFEST" "$REGISTRY_DIR/build/manifests/${d#sha256:}.json" t "$BENCH_FAR_TAGS"
        FAR_TAGS_READY=1
    fi
    section "l. far ls -l _tags with $BENCH_FAR_TAGS tags ($FAR_LABEL; best of $BENCH_REPEAT, fresh mount each time)"
    local i t0 c0 cold=() seq=() par=() cfg n ok
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        far_mount
        c0="$(far_connections)"
        t0="$(now)"
        ls -l "$MNT/$FAR_TAG_REPO/_tags" >/dev/null
        cold+=("$(elapsed "$t0")")
        n="$(find "$MNT/$FAR_TAG_REPO/_tags/" -mindepth 1 -maxdepth 1 -type l | wc -l)"
        echo "  run $((i + 1)): regfs ${cold[-1]} s, $n symlinks, $(stat_of requests_tags) tags/list + $(stat_of requests_manifest_head) manifest HEAD +" \
            "$(stat_of requests_manifest_get) manifest GET requests, $(($(far_connections) - c0)) new connections"
        bench_unmount
    done
    cfg="$WORK/far-heads.curl"
    : >"$cfg"
    for ((i = 1; i <= BENCH_FAR_TAGS; i++)); do
        printf 'url = "%s/v2/%s/manifests/t%04d"\noutput = "/dev/null"\n' "$FAR_URL" "$FAR_TAG_REPO" "$i" >>"$cfg"
    done
    # One connection, one HEAD after the other: BENCH_FAR_TAGS round trips (run once).
    t0="$(now)"
    curl -sf -o /dev/null "$FAR_URL/v2/$FAR_TAG_REPO/tags/list"
    ok="$(curl -s -I -H "Accept: $MT_OCI_MANIFEST" -w '%{http_code}\n' -K "$cfg" | grep -c '^200$' || true)"
    seq+=("$(elapsed "$t0")")
    echo "  curl tags/list + $BENCH_FAR_TAGS HEADs on one connection: ${seq[-1]} s ($ok answered 200)"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        t0="$(now)"
        curl -sf -o /dev/null "$FAR_URL/v2/$FAR_TAG_REPO/tags/list"
        c0="$(far_connections)"
        ok="$(curl -s -I -H "Accept: $MT_OCI_MANIFEST" -w '%{http_code}\n' --no-progress-meter --parallel --parallel-max "$BENCH_FAR_TAG_PARALLEL" -K "$cfg" | grep -c '^200$' || true)"
        par+=("$(elapsed "$t0")")
        echo "  curl tags/list + $BENCH_FAR_TAGS HEADs, $BENCH_FAR_TAG_PARALLEL in parallel: ${par[-1]} s ($ok answered 200, $(($(far_connections) - c0)) new connections)"
    done
    figure "far ls -l _tags, $BENCH_FAR_TAGS tags, vs one connection" "$(min "${cold[@]}") s" "curl ${seq[0]} s" "$(calc "$(min "${cold[@]}") / ${seq[0]}" 3)x" "<= 0.1x" "$(verdict "$(calc "$(min "${cold[@]}") / ${seq[0]}")" '<=' 0.1)"
    figure "far ls -l _tags, $BENCH_FAR_TAGS tags, vs $BENCH_FAR_TAG_PARALLEL in parallel" "$(min "${cold[@]}") s" "curl $(min "${par[@]}") s" "$(calc "$(min "${cold[@]}") / $(min "${par[@]}")" 2)x" "<= 1.0x" "$(verdict "$(calc "$(min "${cold[@]}") / $(min "${par[@]}")")" '<=' 1.0)"
    report "far ls -l _tags ($BENCH_FAR_TAGS tags, $FAR_LABEL): regfs $(best_med "${cold[@]}"); curl tags/list + HEADs one connection ${seq[0]} s, $BENCH_FAR_TAG_PARALLEL parallel $(best_med "${par[@]}"); ratio (regfs/curl one-connection time) $(calc "$(min "${cold[@]}") / ${seq[0]}" 3)x (target <= 0.1x) $(verdict "$(calc "$(min "${cold[@]}") / ${seq[0]}")" '<=' 0.1), regfs/curl $BENCH_FAR_TAG_PARALLEL-parallel $(calc "$(min "${cold[@]}") / $(min "${par[@]}")" 2)x (target <= 1.0x) $(verdict "$(calc "$(min "${cold[@]}") / $(min "${par[@]}")")" '<=' 1.0); $n of $BENCH_FAR_TAGS listed"
}

# m. _export/latest.tar (cold) vs skopeo copy to docker-archive, both through the proxy.
bench_far_export() {
    need_blob
    need_far
    section "m. far cat _export/latest.tar, $SIZE_LABEL layer ($FAR_LABEL; best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 regfs=() sk=() x="$WORK/far-skopeo-archive.tar" tr ts
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        far_mount
        t0="$(now)"
        cat "$MNT/$BLOB_REPO/_export/latest.tar" >/dev/null
        regfs+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs ${regfs[-1]} s, $(calc "$(stat_of bytes_fetched) / 1048576" 1) MiB fetched, $(stat_of requests) requests"
        bench_unmount
        rm -f "$x"
        t0="$(now)"
        skopeo copy --src-tls-verify=false "docker://$FAR_HOST/$BLOB_REPO:latest" "docker-archive:$x" >/dev/null 2>&1 ||
            die "skopeo copy docker-archive (through the proxy) failed"
        sk+=("$(elapsed "$t0")")
        echo "         skopeo copy ${sk[-1]} s, $(stat -c %s "$x") bytes"
        rm -f "$x"
        sync
    done
    tr="$(min "${regfs[@]}")"
    ts="$(min "${sk[@]}")"
    figure "far _export tar, $SIZE_LABEL layer (time)" "$tr s" "skopeo $ts s" "$(calc "$tr / $ts" 2)x" "<= 0.3x" "$(verdict "$(calc "$tr / $ts")" '<=' 0.3)"
    report "far _export tar of a $SIZE_LABEL image ($FAR_LABEL): regfs $(best_med "${regfs[@]}"), skopeo copy docker:// docker-archive: $(best_med "${sk[@]}"), ratio (regfs/skopeo time, best) $(calc "$tr / $ts" 2)x (target <= 0.3x) $(verdict "$(calc "$tr / $ts")" '<=' 0.3)"
}

# n. upload of BENCH_SIZE_MB fresh random bytes: cp into _uploads/ vs curl POST + PUT -T, through the proxy.
bench_far_upload() {
    need_far
    section "n. far upload of $SIZE_LABEL ($FAR_LABEL; best of $BENCH_REPEAT; fresh data, repository and mount each time)"
    local i t0 tr=() tc=() f="$WORK/far-upload.bin" d repo link ok=1 ratio
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        head -c "${BENCH_SIZE_MB}M" /dev/urandom >"$f"
        d="$(blob_digest "$f")"
        sync
        repo="bench/far-upload-regfs-$i"
        far_mount
        mkdir -p "$MNT/$repo"
        t0="$(now)"
        cp "$f" "$MNT/$repo/_uploads/blob"
        tr+=("$(elapsed "$t0")")
        link="$(readlink "$MNT/$repo/_uploads/blob" || true)"
        if [[ $link != "../_blobs/$d" ]] || ! registry_has_blob "$repo" "$d" "$(file_size "$f")"; then
            log "far upload check failed: _uploads/blob -> '$link', expected ../_blobs/$d (or the registry lacks it)"
            ok=0
        fi
        echo "  run $((i + 1)): regfs cp ${tr[-1]} s, $(stat_of requests_blob_push) blob push requests"
        bench_unmount
        head -c "${BENCH_SIZE_MB}M" /dev/urandom >"$f"
        d="$(blob_digest "$f")"
        sync
        repo="bench/far-upload-curl-$i"
        t0="$(now)"
        REGISTRY_URL="$FAR_URL" curl_upload "$repo" "$f" "$d"
        tc+=("$(elapsed "$t0")")
        registry_has_blob "$repo" "$d" "$(file_size "$f")" || { log "far curl upload of $d not in the registry"; ok=0; }
        echo "         curl POST + PUT ${tc[-1]} s"
    done
    rm -f "$f"
    ratio="$(calc "$(min "${tc[@]}") / $(min "${tr[@]}")" 2)"
    figure "far upload of one $SIZE_LABEL blob (throughput)" "$(min "${tr[@]}") s" "curl $(min "${tc[@]}") s" "${ratio}x" ">= 0.9x" "$(verdict "$ratio" '>=' 0.9)"
    report "far upload $SIZE_LABEL ($FAR_LABEL): regfs cp $(best_med "${tr[@]}"), curl POST + PUT $(best_med "${tc[@]}"), ratio (regfs/curl throughput, best) ${ratio}x (target >= 0.9x: one blob is one stream) $(verdict "$ratio" '>=' 0.9)"
    ((ok)) || report "far upload $SIZE_LABEL: CONTENT CHECK FAILED (see the log above)"
}

# make_docker_archive OUT LAYERS MIB NAME — a `docker save` archive (manifest.json,
# config, uncompressed layer tars) of an image with LAYERS layers, each one file
# of MIB MiB of fresh random data, tagged NAME:latest.
make_docker_archive() {
    python3 - "$@" <<'PY'
import hashlib, io, json, os, sys, tarfile
out, layers, mib, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tmp = os.path.dirname(out)
paths, diff_ids = [], []
for i in range(layers):
    p = os.path.join(tmp, f"layer{i}.tar")
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        body = os.path.join(tmp, f"layer{i}.bin")
        with open(body, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        info = t.gettarinfo(body, f"data/layer{i}.bin")
        info.mtime = 0
        with open(body, "rb") as f:
            t.addfile(info, f)
        os.unlink(body)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    paths.append(p)
    diff_ids.append("sha256:" + h.hexdigest())
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cname, "RepoTags": [f"{name}:latest"],
                        "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}]).encode()
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
    for n, data in ((cname, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(n); info.size = len(data); t.addfile(info, io.BytesIO(data))
    for d, p in zip(diff_ids, paths):
        t.add(p, f"{d[7:]}/layer.tar")
        os.unlink(p)
PY
}

# n2. upload of an image archive (BENCH_FAR_IMAGE_LAYERS layers of
# BENCH_FAR_IMAGE_LAYER_MB MiB of fresh random data): cp of a `docker save` tar
# into _uploads/ (regfs pushes the layers UPLOAD_CONCURRENCY = 4 at a time) vs
# skopeo copy docker-archive: docker:// (which compresses and pushes layers in
# parallel too), both through the proxy, each with its own fresh data.
bench_far_upload_image() {
    need_far
    local layers="$BENCH_FAR_IMAGE_LAYERS" mib="$BENCH_FAR_IMAGE_LAYER_MB"
    section "n2. far upload of an image archive, $layers layers of $mib MiB ($FAR_LABEL; best of $BENCH_REPEAT; fresh data, repository and mount each time)"
    local i t0 tr=() tc=() a="$WORK/far-image.tar" repo ok=1 ratio got c0
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        repo="bench/far-image-regfs-$i"
        make_docker_archive "$a" "$layers" "$mib" "$repo"
        sync
        far_mount
        mkdir -p "$MNT/$repo"
        c0="$(far_connections)"
        t0="$(now)"
        cp "$a" "$MNT/$repo/_uploads/image.tar"
        tr+=("$(elapsed "$t0")")
        got="$(curl -s -o /dev/null -w '%{http_code}' -I -H "Accept: application/vnd.docker.distribution.manifest.v2+json, $MT_OCI_MANIFEST" "$REGISTRY_URL/v2/$repo/manifests/latest")"
        [[ $got == 200 ]] || { log "far image upload: $repo:latest answered $got after cp"; ok=0; }
        echo "  run $((i + 1)): regfs cp ${tr[-1]} s, $(stat_of requests_blob_push) blob push requests, $(($(far_connections) - c0)) new connections"
        bench_unmount
        repo="bench/far-image-skopeo-$i"
        make_docker_archive "$a" "$layers" "$mib" "$repo"
        sync
        t0="$(now)"
        skopeo copy --dest-tls-verify=false "docker-archive:$a" "docker://$FAR_HOST/$repo:latest" >/dev/null 2>&1 ||
            die "skopeo copy docker-archive: docker:// (through the proxy) failed"
        tc+=("$(elapsed "$t0")")
        echo "         skopeo copy ${tc[-1]} s"
    done
    rm -f "$a"
    ratio="$(calc "$(min "${tc[@]}") / $(min "${tr[@]}")" 2)"
    figure "far upload of a $layers x $mib MiB image archive (throughput)" "$(min "${tr[@]}") s" "skopeo $(min "${tc[@]}") s" "${ratio}x" ">= 1.0x" "$(verdict "$ratio" '>=' 1.0)"
    report "far upload of a $layers x $mib MiB image archive ($FAR_LABEL): regfs cp into _uploads/ $(best_med "${tr[@]}"), skopeo copy docker-archive: docker:// $(best_med "${tc[@]}"), ratio (regfs/skopeo throughput, best) ${ratio}x (target >= 1.0x) $(verdict "$ratio" '>=' 1.0)"
    ((ok)) || report "far upload of an image archive: CHECK FAILED (see the log above)"
}

FAR_BACKUP_REPO=bench/farbackup
FAR_BACKUP_READY=0

# o. rsync -a backup of a BENCH_FAR_BACKUP_TAGS-tag repository vs skopeo sync, through the proxy.
bench_far_backup() {
    need_far
    if ((!FAR_BACKUP_READY)); then
        build_backup_repo "$FAR_BACKUP_REPO" "$BENCH_FAR_BACKUP_TAGS"
        FAR_BACKUP_READY=1
    fi
    section "o. far rsync -a backup of $FAR_BACKUP_REPO ($BENCH_FAR_BACKUP_TAGS tags, $FAR_LABEL; best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 c0 regfs=() sk=() bk="$WORK/far-backup" sd="$WORK/far-skopeo-sync" tr ts
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        rm -rf "$bk" "$sd"
        far_mount
        c0="$(far_connections)"
        t0="$(now)"
        rsync -a "$MNT/$FAR_BACKUP_REPO/" "$bk/"
        regfs+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs rsync ${regfs[-1]} s ($(stat_of requests) requests, $(calc "$(stat_of bytes_fetched) / 1048576" 1) MiB fetched," \
            "$(($(far_connections) - c0)) new connections, $(du -sm "$bk" | cut -f1) MiB copied)"
        bench_unmount
        t0="$(now)"
        skopeo sync --src docker --dest dir --src-tls-verify=false "$FAR_HOST/$FAR_BACKUP_REPO" "$sd/" >/dev/null 2>&1 ||
            die "skopeo sync (through the proxy) failed"
        sk+=("$(elapsed "$t0")")
        echo "         skopeo sync ${sk[-1]} s ($(du -sm "$sd" | cut -f1) MiB written)"
    done
    rm -rf "$bk" "$sd"
    tr="$(min "${regfs[@]}")"
    ts="$(min "${sk[@]}")"
    figure "far rsync -a backup, $BENCH_FAR_BACKUP_TAGS tags (time)" "$tr s" "skopeo sync $ts s" "$(calc "$tr / $ts" 2)x" "<= 0.3x" "$(verdict "$(calc "$tr / $ts")" '<=' 0.3)"
    report "far rsync -a backup of $BENCH_FAR_BACKUP_TAGS tags ($FAR_LABEL): regfs $(best_med "${regfs[@]}"), skopeo sync --src docker --dest dir $(best_med "${sk[@]}"), ratio (regfs/skopeo time, best) $(calc "$tr / $ts" 2)x (target <= 0.3x) $(verdict "$(calc "$tr / $ts")" '<=' 0.3)"
}

# ---------------------------------------------------------------- issue 13 item 5: metadata at scale

SCALE_MANIFEST=""
SCALE_REPOS=0 # repositories r00001.. seeded so far

# curl_parallel_status METHOD CFG [CURL_ARGS...] — run the requests in the curl
# config CFG, 8 at a time on reused connections; prints how many answered 2xx.
curl_parallel_status() {
    local method="$1" cfg="$2"
    shift 2
    curl -s --no-progress-meter -X "$method" -o /dev/null -w '%{http_code}\n' --parallel --parallel-max 8 "$@" -K "$cfg" | grep -c '^20[01]$' || true
}

# scale_seed_repos N — grow the registry to N repositories r00001..rN, each with
# one tag v1 on a manifest with no layers: a cross-repository mount of its config
# and a manifest PUT per repository, 8 requests in flight.
scale_seed_repos() {
    local n="${1:?}" i cfg cd mounted put t0
    if [[ -z $SCALE_MANIFEST ]]; then
        printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$WORK/scale-config.json"
        cd="$(push_blob scale/seed "$WORK/scale-config.json")"
        SCALE_MANIFEST="$WORK/scale-manifest.json"
        jq -cn --arg mt "$MT_OCI_MANIFEST" --arg cmt "$MT_OCI_CONFIG" --arg cd "$cd" \
            --argjson cs "$(file_size "$WORK/scale-config.json")" \
            '{schemaVersion: 2, mediaType: $mt, config: {mediaType: $cmt, digest: $cd, size: $cs}, layers: []}' >"$SCALE_MANIFEST"
        push_manifest scale/seed v1 "$MT_OCI_MANIFEST" "$SCALE_MANIFEST" >/dev/null
        SCALE_CONFIG_DIGEST="$cd"
    fi
    ((n > SCALE_REPOS)) || return 0
    t0="$(now)"
    cfg="$WORK/scale-mounts.curl"
    : >"$cfg"
    for ((i = SCALE_REPOS + 1; i <= n; i++)); do
        printf 'url = "%s/v2/r%05d/blobs/uploads/?mount=%s&from=scale/seed"\n' "$REGISTRY_URL" "$i" "$SCALE_CONFIG_DIGEST" >>"$cfg"
    done
    mounted="$(curl_parallel_status POST "$cfg")"
    : >"$cfg"
    for ((i = SCALE_REPOS + 1; i <= n; i++)); do
        printf 'url = "%s/v2/r%05d/manifests/v1"\n' "$REGISTRY_URL" "$i" >>"$cfg"
    done
    put="$(curl_parallel_status PUT "$cfg" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary @"$SCALE_MANIFEST")"
    ((mounted == n - SCALE_REPOS && put == n - SCALE_REPOS)) ||
        die "scale_seed_repos: $mounted mounts and $put manifest PUTs of $((n - SCALE_REPOS)) succeeded"
    echo "seeded repositories r$(printf %05d $((SCALE_REPOS + 1)))..r$(printf %05d "$n") in $(elapsed "$t0") s"
    SCALE_REPOS="$n"
}

# scale_seed_tags REPO N — REPO with tags t00001..tN on the scale manifest, 8 PUTs in flight.
scale_seed_tags() {
    local repo="${1:?}" n="${2:?}" i cfg put t0
    t0="$(now)"
    curl -sf -o /dev/null -X POST "$REGISTRY_URL/v2/$repo/blobs/uploads/?mount=$SCALE_CONFIG_DIGEST&from=scale/seed"
    cfg="$WORK/scale-tags.curl"
    : >"$cfg"
    for ((i = 1; i <= n; i++)); do
        printf 'url = "%s/v2/%s/manifests/t%05d"\n' "$REGISTRY_URL" "$repo" "$i" >>"$cfg"
    done
    put="$(curl_parallel_status PUT "$cfg" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary @"$SCALE_MANIFEST")"
    ((put == n)) || die "scale_seed_tags: $put of $n tag PUTs succeeded"
    echo "seeded $repo with $n tags in $(elapsed "$t0") s"
}

# curl_pages URL — GET URL and every page its Link headers lead to (a new curl
# per page, like a script would); prints the number of pages.
curl_pages() {
    local url="${1:?}" next pages=0 hdr
    while [[ -n $url ]]; do
        hdr="$(curl -sf -o /dev/null -D - "$url")" || die "curl_pages: GET $url failed"
        pages=$((pages + 1))
        next="$(awk 'tolower($1) == "link:" { print $2 }' <<<"$hdr" | tr -d '\r<>;')"
        url=""
        [[ -n $next ]] && url="$(_abs_location "$next")"
    done
    echo "$pages"
}

# curl_one_connection CFG [CURL_ARGS...] — the requests in CFG one after the
# other on one connection; prints how many answered 200.
curl_one_connection() {
    local cfg="$1"
    shift
    curl -s -o /dev/null -w '%{http_code}\n' "$@" -K "$cfg" | grep -c '^200$' || true
}

# time_cmd CMD — seconds the shell command CMD takes (its stdout goes to
# $WORK/cmd.out), or BENCH_SCALE_TIMEOUT when it ran out of time (then it is
# stopped and TIMED_OUT is set to 1).
TIMED_OUT=0
time_cmd() {
    local t0 t rc=0
    t0="$(now)"
    timeout "$BENCH_SCALE_TIMEOUT" bash -c "$1" >"$WORK/cmd.out" 2>/dev/null || rc=$?
    t="$(elapsed "$t0")"
    if ((rc == 124)); then
        TIMED_OUT=1
        echo "$BENCH_SCALE_TIMEOUT"
    else
        echo "$t"
    fi
}

# scale_hwm — the current mount's daemon VmHWM in KiB, kept as the largest seen in SCALE_HWM.
SCALE_HWM=0
scale_hwm() {
    local h
    h="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$REGFS_MOUNT_PID/status")"
    ((h > SCALE_HWM)) && SCALE_HWM="$h"
    return 0
}

SCALE_RESULTS=()

# scale_step N — the measurements with N repositories and a repository with N tags.
scale_step() {
    local n="${1:?}" trepo="scale/tags-$1" i t0 cfg got
    local ls_root=() ls_tags=() lsl_tags=() find_d3=() c_root=() c_tags=() c_lsl=() c_find=()
    local root_n tags_n find_n req_find
    section "Setup: $n repositories, $trepo with $n tags"
    scale_seed_repos "$n"
    scale_seed_tags "$trepo" "$n"
    section "p. metadata at scale, $n repositories / $n tags (loopback; best of $BENCH_SCALE_REPEAT, fresh mount per command)"
    for ((i = 0; i < BENCH_SCALE_REPEAT; i++)); do
        TIMED_OUT=0
        bench_mount
        ls_root+=("$(time_cmd "ls '$MNT/'")")
        root_n="$(wc -l <"$WORK/cmd.out")"
        scale_hwm
        bench_unmount
        bench_mount
        ls_tags+=("$(time_cmd "ls '$MNT/$trepo/_tags'")")
        tags_n="$(wc -l <"$WORK/cmd.out")"
        scale_hwm
        bench_unmount
        bench_mount
        lsl_tags+=("$(time_cmd "ls -l '$MNT/$trepo/_tags'")")
        scale_hwm
        bench_unmount
        bench_mount
        find_d3+=("$(time_cmd "find '$MNT' -maxdepth 3")")
        find_n="$(wc -l <"$WORK/cmd.out")"
        req_find="$(stat_of requests) requests: $(stat_of requests_catalog) catalog, $(stat_of requests_tags) tags/list, $(stat_of requests_manifest_get) manifest GET, $(stat_of requests_manifest_head) manifest HEAD"
        scale_hwm
        bench_unmount
        ((TIMED_OUT)) && echo "  (a command ran out of its ${BENCH_SCALE_TIMEOUT} s: its time is shown as ${BENCH_SCALE_TIMEOUT} s and its output was cut)"
        echo "  run $((i + 1)): ls / ${ls_root[-1]} s ($root_n entries), ls _tags ${ls_tags[-1]} s ($tags_n), ls -l _tags ${lsl_tags[-1]} s," \
            "find -maxdepth 3 ${find_d3[-1]} s ($find_n paths; $req_find)"
    done
    # The same requests by curl: catalog pages (1000 names each, as regfs asks:
    # CATALOG_PAGE in src/registry/client.rs); tags/list pages; tags/list + one
    # manifest HEAD per tag; catalog + per repository tags/list and a manifest GET
    # of its tag (what _manifests/ and _blobs/ need), on one connection.
    cfg="$WORK/scale-heads.curl"
    : >"$cfg"
    for ((i = 1; i <= n; i++)); do
        printf 'url = "%s/v2/%s/manifests/t%05d"\n' "$REGISTRY_URL" "$trepo" "$i" >>"$cfg"
    done
    local cfgf="$WORK/scale-find.curl" r
    : >"$cfgf"
    while read -r r; do
        printf 'url = "%s/v2/%s/tags/list"\nurl = "%s/v2/%s/manifests/v1"\n' "$REGISTRY_URL" "$r" "$REGISTRY_URL" "$r" >>"$cfgf"
    done < <(for ((i = 1; i <= SCALE_REPOS; i++)); do printf 'r%05d\n' "$i"; done)
    for ((i = 0; i < BENCH_SCALE_REPEAT; i++)); do
        t0="$(now)"
        curl_pages "$REGISTRY_URL/v2/_catalog?n=1000" >/dev/null
        c_root+=("$(elapsed "$t0")")
        t0="$(now)"
        curl_pages "$REGISTRY_URL/v2/$trepo/tags/list" >/dev/null
        c_tags+=("$(elapsed "$t0")")
        t0="$(now)"
        curl_pages "$REGISTRY_URL/v2/$trepo/tags/list" >/dev/null
        got="$(curl_one_connection "$cfg" -I -H "Accept: $MT_OCI_MANIFEST")"
        c_lsl+=("$(elapsed "$t0")")
        ((got == n)) || log "warning: $got of $n manifest HEADs answered 200"
        t0="$(now)"
        curl_pages "$REGISTRY_URL/v2/_catalog?n=1000" >/dev/null
        got="$(curl_one_connection "$cfgf" -H "Accept: $MT_OCI_MANIFEST")"
        c_find+=("$(elapsed "$t0")")
        # Not a figure: what the one catalog page costs that tells regfs
        # `scale` is a namespace (its tag list is 404), i.e. what `ls _tags`
        # pays over curl's one tag list.
        t0="$(now)"
        curl -sf -o /dev/null "$REGISTRY_URL/v2/_catalog?n=100&last=scal"
        echo "  curl run $((i + 1)): the namespace scan page _catalog?n=100&last=scal $(elapsed "$t0") s"
        echo "  curl run $((i + 1)): catalog ${c_root[-1]} s, tags/list ${c_tags[-1]} s, tags/list + $n HEADs ${c_lsl[-1]} s," \
            "catalog + $((2 * n)) tags/list and manifest GETs ${c_find[-1]} s ($got answered 200)"
    done
    local line
    for line in "ls /|ls_root|c_root" "ls _tags|ls_tags|c_tags" "ls -l _tags|lsl_tags|c_lsl" "find -maxdepth 3|find_d3|c_find"; do
        local name arr carr rt ct
        IFS='|' read -r name arr carr <<<"$line"
        local -n ra="$arr" ca="$carr"
        rt="$(min "${ra[@]}")"
        ct="$(min "${ca[@]}")"
        figure "scale $n: $name (time)" "$rt s" "curl $ct s" "$(calc "$rt / $ct" 2)x" "<= 1.5x" "$(verdict "$(calc "$rt / $ct")" '<=' 1.5)"
        report "scale $n: $name: regfs $(best_med "${ra[@]}"), curl $(best_med "${ca[@]}"), ratio (regfs/curl time, best) $(calc "$rt / $ct" 2)x (target <= 1.5x) $(verdict "$(calc "$rt / $ct")" '<=' 1.5)"
        SCALE_RESULTS+=("$n|$name|$rt|$ct")
        unset -n ra ca
    done
}

# scale_rss — the daemon's peak RSS after listing BENCH_SCALE_RSS_REPOS x 1,000
# tags (100,000 by default) on one mount. The repositories are copies of
# scale/tags-1000 made in the registry's filesystem storage (tag links are
# small files; pushing 100,000 tags through the API would take minutes).
scale_rss() {
    local repos="$REGISTRY_DIR/storage/docker/registry/v2/repositories" i n=0 t0 hwm reqs
    scale_seed_repos "$SCALE_REPOS"
    [[ -d $repos/scale/tags-1000 ]] || scale_seed_tags scale/tags-1000 1000
    section "Setup: $BENCH_SCALE_RSS_REPOS copies of scale/tags-1000 (in the registry's storage)"
    t0="$(now)"
    for ((i = 1; i <= BENCH_SCALE_RSS_REPOS; i++)); do
        [[ -d $repos/scale/rss-$i ]] || cp -a "$repos/scale/tags-1000" "$repos/scale/rss-$i"
    done
    echo "copied in $(elapsed "$t0") s"
    section "p. daemon peak RSS after listing $BENCH_SCALE_RSS_REPOS x 1,000 tags (ls of every _tags on one mount)"
    bench_mount
    t0="$(now)"
    for ((i = 1; i <= BENCH_SCALE_RSS_REPOS; i++)); do
        n=$((n + $(ls "$MNT/scale/rss-$i/_tags" | wc -l)))
    done
    t0="$(elapsed "$t0")"
    sleep "$((BENCH_SCALE_RSS_REPOS > 0 ? 4 : 0))" # the background tag resolution of the last listings ends
    hwm="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$REGFS_MOUNT_PID/status")"
    reqs="$(stat_of requests) requests: $(stat_of requests_tags) tags/list, $(stat_of requests_manifest_head) manifest HEAD"
    bench_unmount
    echo "  listed $n tags in $t0 s ($reqs); VmHWM $(calc "$hwm / 1024" 1) MiB"
    figure "scale: daemon peak RSS after listing $n tags" "$(calc "$hwm / 1024" 1) MiB" "-" "-" "< 150 MiB" "$(verdict "$(calc "$hwm / 1024")" '<' 150)"
    report "scale: daemon peak RSS after listing $n tags in $BENCH_SCALE_RSS_REPOS repositories: $(calc "$hwm / 1024" 1) MiB VmHWM (target < 150 MiB) $(verdict "$(calc "$hwm / 1024")" '<' 150)"
}

# p. metadata at scale: each step of BENCH_SCALE_STEPS, growth from the first to
# the last, and the daemon's peak RSS after listing everything at the last step.
bench_scale() {
    local n first last name r0 r1 c0 c1
    for n in "${SCALE_STEPS[@]}"; do
        scale_step "$n"
    done
    first="${SCALE_STEPS[0]}"
    last="${SCALE_STEPS[-1]}"
    if ((last > first)); then
        for name in "ls /" "ls _tags" "ls -l _tags" "find -maxdepth 3"; do
            r0="$(printf '%s\n' "${SCALE_RESULTS[@]}" | awk -F'|' -v n="$first" -v c="$name" '$1 == n && $2 == c { print $3 }')"
            r1="$(printf '%s\n' "${SCALE_RESULTS[@]}" | awk -F'|' -v n="$last" -v c="$name" '$1 == n && $2 == c { print $3 }')"
            c0="$(printf '%s\n' "${SCALE_RESULTS[@]}" | awk -F'|' -v n="$first" -v c="$name" '$1 == n && $2 == c { print $4 }')"
            c1="$(printf '%s\n' "${SCALE_RESULTS[@]}" | awk -F'|' -v n="$last" -v c="$name" '$1 == n && $2 == c { print $4 }')"
            figure "scale growth $first -> $last: $name" "$(calc "$r1 / $r0" 1)x" "curl $(calc "$c1 / $c0" 1)x" "$(calc "$r1 / $r0" 1)x" "<= $(calc "1.5 * $last / $first" 0)x (linear)" "$(verdict "$(calc "$r1 / $r0")" '<=' "$(calc "1.5 * $last / $first")")"
            report "scale growth $first -> $last ($(calc "$last / $first" 0)x the entries): $name regfs ${r0} s -> ${r1} s ($(calc "$r1 / $r0" 1)x; $(calc "$r0 * 1e6 / $first" 0) -> $(calc "$r1 * 1e6 / $last" 0) us per entry; curl's same requests $(calc "$c1 / $c0" 1)x) (target: linear, <= $(calc "1.5 * $last / $first" 0)x) $(verdict "$(calc "$r1 / $r0")" '<=' "$(calc "1.5 * $last / $first")")"
        done
    fi
    figure "scale: daemon peak RSS over every step's mounts" "$(calc "$SCALE_HWM / 1024" 1) MiB" "-" "-" "< 150 MiB" "$(verdict "$(calc "$SCALE_HWM / 1024")" '<' 150)"
    report "scale: daemon peak RSS, largest over the mounts of every step (the largest listed $last repositories, $last tags with ls -l, and find -maxdepth 3 over all repositories): $(calc "$SCALE_HWM / 1024" 1) MiB VmHWM (target < 150 MiB) $(verdict "$(calc "$SCALE_HWM / 1024")" '<' 150)"
    scale_rss
}

# ---------------------------------------------------------------- issue 11: image contents

CONTENTS_REPO=bench/contents
CONTENTS_READY=0
CONTENTS_LAYERS=()   # layer files, bottom first
CONTENTS_TAR_BYTES=0 # uncompressed size of all layers
CONTENTS_BIG=""      # the usr/bin layer file (the 300 MiB one)
CONTENTS_SMALL=""    # a small file of that layer, path inside rootfs/
CONTENTS_FILES=0     # regular files of the merged image

# need_contents — the 5-layer image, pushed once (bench/contents:v1).
need_contents() {
    ((CONTENTS_READY)) && return 0
    section "Setup: a 5-layer image of this machine's files in $CONTENTS_REPO"
    local parts=("etc" "usr/include" "usr/share/doc usr/share/man usr/share/perl usr/share/vim usr/share/i18n"
        "usr/bin" "usr/share/locale") i f n
    for ((i = 0; i < ${#parts[@]}; i++)); do
        f="$WORK/contents-layer$i.tar.gz"
        # shellcheck disable=SC2086 # the part is a list of paths
        tar --sort=name --numeric-owner --ignore-failed-read -C / -cf - ${parts[$i]} 2>/dev/null | gzip -n >"$f"
        n="$(gzip -dc "$f" | wc -c)"
        CONTENTS_TAR_BYTES=$((CONTENTS_TAR_BYTES + n))
        CONTENTS_LAYERS+=("$f")
        echo "layer $i (${parts[$i]}): $(file_size "$f") bytes gzip, $n bytes tar"
    done
    CONTENTS_BIG="${CONTENTS_LAYERS[3]}"
    # A small file in the middle of the big layer (by tar order).
    CONTENTS_SMALL="$(tar -tvzf "$CONTENTS_BIG" | awk '$1 ~ /^-/ && $3 < 65536 { print $6 }' |
        awk '{ v[NR] = $0 } END { print v[int(NR / 2) + 1] }')"
    # Regular files and hard links (`h` lines): `find -type f` counts both.
    CONTENTS_FILES="$(for f in "${CONTENTS_LAYERS[@]}"; do tar -tvzf "$f"; done | awk '$1 ~ /^[-h]/ { print $6 }' | sort -u | wc -l)"
    IMAGE_ARCH="$(go_arch)" make_image "$CONTENTS_REPO" v1 "${CONTENTS_LAYERS[@]}" >/dev/null
    echo "$CONTENTS_REPO:v1: ${#CONTENTS_LAYERS[@]} layers, $CONTENTS_TAR_BYTES bytes of tar, $CONTENTS_FILES files; small file $CONTENTS_SMALL"
    CONTENTS_READY=1
}

# go_arch — this machine's architecture as image platforms name it.
go_arch() {
    case "$(uname -m)" in
    x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) uname -m ;;
    esac
}

contents_rootfs() { printf '%s/%s/_tags/v1/rootfs\n' "$MNT" "$CONTENTS_REPO"; }
layer_url() { printf '%s/v2/%s/blobs/sha256:%s\n' "$REGISTRY_URL" "$CONTENTS_REPO" "$(sha256sum "$1" | cut -d' ' -f1)"; }

# n1. cold listing of the image's files vs curl of its layers piped into tar -tz.
bench_contents_cold_list() {
    need_contents
    section "n1. cold find rootfs -type f | wc -l of a 5-layer image vs curl | tar -tz of its layers (best of $BENCH_REPEAT, fresh mount and empty cache each time)"
    local i t0 tr=() tc=() n f idx=0 ratio
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        t0="$(now)"
        n="$(find "$(contents_rootfs)" -type f | wc -l)"
        tr+=("$(elapsed "$t0")")
        idx="$(du -sb "$CACHE/contents" | cut -f1)"
        echo "  run $((i + 1)): regfs ${tr[-1]} s ($n files, bytes_fetched $(stat_of bytes_fetched), index $idx bytes)"
        bench_unmount
        t0="$(now)"
        for f in "${CONTENTS_LAYERS[@]}"; do
            curl -sf "$(layer_url "$f")" | tar -tz >/dev/null
        done
        tc+=("$(elapsed "$t0")")
        echo "         curl | tar -tz ${tc[-1]} s"
    done
    [[ $n == "$CONTENTS_FILES" ]] || echo "  WARNING: regfs listed $n files, the layers hold $CONTENTS_FILES"
    ratio="$(calc "$(min "${tr[@]}") / $(min "${tc[@]}")" 2)"
    report "contents cold listing (find rootfs -type f | wc -l, $n files, 5 layers, $(calc "$CONTENTS_TAR_BYTES / 1048576" 0) MiB of tar): regfs $(best_med "${tr[@]}"), curl | tar -tz $(best_med "${tc[@]}"), ratio (regfs/curl time, best) ${ratio}x (target <= 1.2x) $(verdict "$ratio" '<=' 1.2)"
    report "contents index on disk: $idx bytes for $CONTENTS_TAR_BYTES bytes of tar ($(calc "$idx * 100 / $CONTENTS_TAR_BYTES" 2) %) (target < 2 %) $(verdict "$(calc "$idx * 100 / $CONTENTS_TAR_BYTES")" '<' 2)"
}

# n2. warm index, blob evicted: one small file of the 300 MiB layer.
bench_contents_warm_read() {
    need_contents
    section "n2. warm index, blobs evicted: cat of one small file ($CONTENTS_SMALL) of the usr/bin layer vs curl of that layer (best of $BENCH_REPEAT)"
    local i t0 tr=() tc=() fetched=() cache="$WORK/contents-warm-cache" big_bytes ratio
    big_bytes="$(file_size "$CONTENTS_BIG")"
    # Index the image once, in a cache dir kept across the mounts below.
    MNT="$WORK/mnt-warm"
    regfs_mount_fg "$MNT" "$cache" "$WORK/regfs-warm.log" --log-level warn "${MOUNT_OPTS[@]}" || die "mount failed"
    find "$(contents_rootfs)" -type f >/dev/null
    regfs_unmount
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        rm -rf "$cache/blobs" "$cache/partial"
        regfs_mount_fg "$MNT" "$cache" "$WORK/regfs-warm.log" --log-level warn "${MOUNT_OPTS[@]}" || die "mount failed"
        t0="$(now)"
        cat "$(contents_rootfs)/$CONTENTS_SMALL" >/dev/null
        tr+=("$(elapsed "$t0")")
        fetched+=("$(stat_of bytes_fetched)")
        echo "  run $((i + 1)): regfs ${tr[-1]} s, bytes_fetched ${fetched[-1]} of the $big_bytes byte layer"
        regfs_unmount
        t0="$(now)"
        curl -sf -o /dev/null "$(layer_url "$CONTENTS_BIG")"
        tc+=("$(elapsed "$t0")")
        echo "         curl of the layer ${tc[-1]} s"
    done
    rm -rf "$cache"
    ratio="$(calc "$(min "${tr[@]}") / $(min "${tc[@]}")" 3)"
    report "contents warm read, blob evicted (one small file of a $(calc "$big_bytes / 1048576" 0) MiB gzip layer, $(calc "$(gzip -dc "$CONTENTS_BIG" | wc -c) / 1048576" 0) MiB of tar): regfs $(best_med "${tr[@]}"), curl of the whole layer $(best_med "${tc[@]}") (ratio ${ratio}x); fetched best $(calc "$(min "${fetched[@]}") / 1048576" 2) MiB, median $(calc "$(median "${fetched[@]}") / 1048576" 2) MiB (target <= 8 MiB) $(verdict "$(calc "$(median "${fetched[@]}") / 1048576")" '<=' 8)"
}

# n3. cat of every file through the mount vs skopeo copy + umoci unpack.
bench_contents_cat_all() {
    need_contents
    section "n3. cat of every file of the image (find -type f -exec cat) vs skopeo copy + umoci unpack (best of $BENCH_REPEAT, fresh each time)"
    local i t0 tr=() tc=() host out ratio
    host="${REGISTRY_URL#http://}"
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        t0="$(now)"
        find "$(contents_rootfs)" -type f -exec cat {} + >/dev/null
        tr+=("$(elapsed "$t0")")
        echo "  run $((i + 1)): regfs ${tr[-1]} s (bytes_fetched $(stat_of bytes_fetched))"
        bench_unmount
        out="$WORK/umoci$i"
        mkdir -p "$out"
        t0="$(now)"
        skopeo copy -q --src-tls-verify=false "docker://$host/$CONTENTS_REPO:v1" "oci:$out/layout:v1" >/dev/null
        umoci unpack --image "$out/layout:v1" "$out/bundle" >/dev/null 2>&1
        tc+=("$(elapsed "$t0")")
        echo "         skopeo copy + umoci unpack ${tc[-1]} s"
        rm -rf "$out"
        sync
    done
    ratio="$(calc "$(min "${tr[@]}") / $(min "${tc[@]}")" 2)"
    report "contents cat of every file ($CONTENTS_FILES files): regfs $(best_med "${tr[@]}"), skopeo copy + umoci unpack $(best_med "${tc[@]}"), ratio (regfs/skopeo+umoci time, best) ${ratio}x (target <= 1.0x) $(verdict "$ratio" '<=' 1.0)"
}

# n4. daemon peak RSS with the rootfs of an image of BENCH_CONTENTS_FILES files listed.
bench_contents_rss() {
    local files="${BENCH_CONTENTS_FILES:-200000}" layer="$WORK/contents-many.tar.gz" i t0 hwm=() tl=() pid
    section "n4. daemon peak RSS with the rootfs of an image of $files files listed (find -printf of every entry; best of $BENCH_REPEAT)"
    python3 - "$layer" "$files" <<'PY'
import io, sys, tarfile, gzip
out, n = sys.argv[1], int(sys.argv[2])
with gzip.open(out, "wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as t:
    for d in range(n // 1000 + 1):
        info = tarfile.TarInfo(f"data/d{d:04}"); info.type = tarfile.DIRTYPE; info.mode = 0o755; info.mtime = 1700000000
        t.addfile(info)
    for i in range(n):
        body = f"file {i}\n".encode()
        info = tarfile.TarInfo(f"data/d{i // 1000:04}/file-with-a-longish-name-{i:07}.txt")
        info.size = len(body); info.mode = 0o644; info.mtime = 1700000000
        t.addfile(info, io.BytesIO(body))
PY
    IMAGE_ARCH="$(go_arch)" make_image bench/many v1 "$layer" >/dev/null
    for ((i = 0; i < BENCH_REPEAT; i++)); do
        bench_mount
        pid="$REGFS_MOUNT_PID"
        t0="$(now)"
        find "$MNT/bench/many/_tags/v1/rootfs" -printf '%s %m %p\n' | wc -l >/dev/null
        tl+=("$(elapsed "$t0")")
        hwm+=("$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$pid/status")")
        echo "  run $((i + 1)): find -printf ${tl[-1]} s, VmHWM $(calc "${hwm[-1]} / 1024" 1) MiB"
        bench_unmount
    done
    report "contents memory: daemon peak RSS with $files files listed: best $(calc "$(min "${hwm[@]}") / 1024" 1) MiB, median $(calc "$(median "${hwm[@]}") / 1024" 1) MiB VmHWM (cold find -printf of every entry: $(best_med "${tl[@]}")) (target < 100 MiB) $(verdict "$(calc "$(median "${hwm[@]}") / 1024")" '<' 100)"
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
if [[ " ${RUN_SECTIONS[*]} " == *" far_"* ]]; then
    cargo build --release --example farproxy
fi
WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/regfs-bench.XXXXXX")"
REGFS_REGISTRY_ACCESSLOG_DISABLED=true start_registry "$WORK/registry"

LOADS=()
for s in "${RUN_SECTIONS[@]}"; do
    LOADS+=("$s $(cut -d' ' -f1 /proc/loadavg)")
    "bench_$s"
done
LOADS+=("end $(cut -d' ' -f1 /proc/loadavg)")

section "Summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $("$REGFS_BIN" --version 2>/dev/null || echo regfs), blob $SIZE_LABEL, best of $BENCH_REPEAT)"
printf '%s\n' "${RESULTS[@]}"
echo "load average (1 min) at the start of each section: ${LOADS[*]}"
print_figures
