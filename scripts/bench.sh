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
#   BENCH_SECTIONS="..."    which sections to run, in order (default: all, see SECTIONS),
#                           e.g. BENCH_SECTIONS=upload BENCH_SIZE_MB=1024 bash scripts/bench.sh
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

SECTIONS=(cold_read warm_read random_read tags_listing peak_rss backup_rsync restore_rsync export_tar upload)

BENCH_SIZE_MB="${BENCH_SIZE_MB:-1024}"
BENCH_REPEAT="${BENCH_REPEAT:-3}"
BENCH_RANDOM_READS="${BENCH_RANDOM_READS:-50}"
BENCH_TAGS="${BENCH_TAGS:-1000}"
BENCH_SEED="${BENCH_SEED:-42}"
BENCH_BACKUP_TAGS="${BENCH_BACKUP_TAGS:-120}"
BENCH_BACKUP_IMAGES="${BENCH_BACKUP_IMAGES:-4}"
BENCH_BACKUP_LAYER_MB="${BENCH_BACKUP_LAYER_MB:-4}"
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
    local n_img="$BENCH_BACKUP_IMAGES" per i d base own small prefix count done=0 letters=abcdefghijklmnopqrstuvwxyz
    section "Setup: $BENCH_BACKUP_TAGS tags over $n_img images (${BENCH_BACKUP_LAYER_MB} MiB shared base layer + 1 MiB own layer each) in $BACKUP_REPO"
    base="$(make_big_layer "$WORK/backup-base.tar.gz" "$BENCH_BACKUP_LAYER_MB" base)"
    per=$(((BENCH_BACKUP_TAGS + n_img - 1) / n_img))
    for ((i = 0; i < n_img; i++)); do
        own="$(make_big_layer "$WORK/backup-own$i.tar.gz" 1 "own$i")"
        small="$(make_layer "$WORK/backup-small$i.tar.gz" "backup image $i")"
        d="$(make_image "$BACKUP_REPO" - "$base" "$own" "$small")"
        prefix="${letters:i%26:1}" # tags a0001.., b0001.., ...
        count=$((BENCH_BACKUP_TAGS - done < per ? BENCH_BACKUP_TAGS - done : per))
        ((count > 0)) || break
        tag_many "$BACKUP_REPO" "$MT_OCI_MANIFEST" "$REGISTRY_DIR/build/manifests/${d#sha256:}.json" "$prefix" "$count"
        done=$((done + count))
    done
    echo "$BACKUP_REPO: $(curl -sf "$REGISTRY_URL/v2/$BACKUP_REPO/tags/list" | jq '.tags | length') tags," \
        "$(du -sm "$REGISTRY_DIR/storage" | cut -f1) MiB in the registry"
    BACKUP_READY=1
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
