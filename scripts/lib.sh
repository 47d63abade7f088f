# shellcheck shell=bash
# scripts/lib.sh — shared helpers for scripts/demo.sh, scripts/test.sh and scripts/bench.sh.
#
# Source it:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Conventions
#   * Values (digests, paths) go to stdout, progress and errors to stderr.
#   * Functions return non-zero on failure (callers run with `set -euo pipefail`).
#   * start_registry / regfs_mount start background processes and record their
#     pids in globals: call them directly, never inside $( ... ), or the pid is lost.
#   * Only processes started here are ever stopped, by their recorded pid.

# The Debian packages the scripts and the integration tests rely on (every
# program they run; tests/harness.rs every_program_the_suite_runs_is_installed_by_lib_sh
# checks the list against the sources; mawk is awk).
REGFS_PACKAGES=(docker-registry skopeo umoci rsync fuse3 apache2-utils openssl attr curl jq podman python3 zstd gzip tar findutils diffutils coreutils util-linux mount mawk)

REGFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGFS_BIN="${REGFS_BIN:-$REGFS_ROOT/target/release/regfs}"

# cargo is often installed by rustup into ~/.cargo/bin without being on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

MT_OCI_MANIFEST="application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX="application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG="application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP="application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_TAR="application/vnd.oci.image.layer.v1.tar"

# ---------------------------------------------------------------- messages

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# section "Title" — a visible heading.
section() {
    if [[ -t 1 ]]; then
        printf '\n\033[1m==> %s\033[0m\n' "$*"
    else
        printf '\n==> %s\n' "$*"
    fi
}

# run CMD... — echo a command the way a user would type it, then run it.
run() {
    printf '$ %s\n' "$*"
    "$@"
}

# ---------------------------------------------------------------- time / math

now() { date +%s.%N; }

# elapsed START — seconds since START (from `now`), 3 decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# calc EXPR [DECIMALS] — float arithmetic with awk, e.g. calc "1/3" → 0.333, calc "1/3" 1 → 0.3.
calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }

# ---------------------------------------------------------------- packages

# ensure_packages [EXTRA_PKG...] — install the Debian packages that are missing.
# Fast (a single dpkg-query) when everything is present; apt-get update only when
# something is missing.
ensure_packages() {
    local wanted=("${REGFS_PACKAGES[@]}" "$@") missing=() p installed
    if ! command -v dpkg-query >/dev/null 2>&1; then
        log "ensure_packages: no dpkg-query (not Debian?); assuming ${wanted[*]} are installed"
        return 0
    fi
    installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${wanted[@]}" 2>/dev/null || true)"
    for p in "${wanted[@]}"; do
        grep -qE "^${p} ii" <<<"$installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0

    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing packages: ${missing[*]} (run as root or install sudo)"
        sudo=(sudo)
    fi
    log "installing missing packages: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
        die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# ensure_cargo — fail with a hint when there is no Rust toolchain.
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found; install Rust (https://rustup.rs) and retry"
}

# ensure_ferro — the second registry implementation of the test matrix:
# ferro-oci-server (OCI distribution 1.1: referrers API, Link-paginated tags and
# catalog) from crates.io, installed with cargo when missing (~8 min on 2 cores).
# The tests find it on PATH or in ~/.cargo/bin (REGFS_FERRO overrides).
REGFS_FERRO_VERSION="${REGFS_FERRO_VERSION:-1.0.0}"
ensure_ferro() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/ferro-oci-server"
    if command -v ferro-oci-server >/dev/null 2>&1 || [[ -x $bin ]]; then
        return 0
    fi
    ensure_cargo
    log "installing ferro-oci-server $REGFS_FERRO_VERSION (cargo install --locked; takes minutes)"
    cargo install --locked --version "$REGFS_FERRO_VERSION" ferro-oci-server ||
        die "cargo install ferro-oci-server failed"
}

# ensure_fuse — fail with a hint when FUSE cannot work here.
ensure_fuse() {
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing (load the fuse module, or give the container --device /dev/fuse)"
    command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 missing (apt-get install fuse3)"
}

# ---------------------------------------------------------------- registry

REGISTRY_PID=""
REGISTRY_URL=""
REGISTRY_HOST=""
REGISTRY_PORT=""
REGISTRY_DIR=""

# start_registry DIR — a throw-away docker-registry (distribution 2.8) on a free
# 127.0.0.1 port, storing under DIR/storage, logging to DIR/registry.log.
# Exports REGISTRY_URL (http://127.0.0.1:PORT), REGISTRY_HOST (127.0.0.1:PORT),
# REGISTRY_PORT, REGISTRY_PID, REGISTRY_DIR.
# REGFS_REGISTRY_ACCESSLOG_DISABLED=true turns the per-request log off (benchmarks).
# (The log level stays info: the registry reports its port at that level.)
# The registry binds port 0 itself and logs the port it got, so there is no
# race between picking a free port and using it.
start_registry() {
    local dir="${1:?start_registry DIR}" i port=""
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    mkdir -p "$dir/storage" "$dir/build"
    command -v docker-registry >/dev/null 2>&1 || die "docker-registry missing (apt-get install docker-registry)"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: ${REGFS_REGISTRY_ACCESSLOG_DISABLED:-false}
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: regfs-scripts-$$
EOF
    # docker-registry reads REGISTRY_* variables as config overrides: keep ours out.
    env -u REGISTRY_URL -u REGISTRY_HOST -u REGISTRY_PORT -u REGISTRY_PID -u REGISTRY_DIR \
        docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REGISTRY_PID=$!
    REGISTRY_DIR="$dir"
    for ((i = 0; i < 150; i++)); do
        port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$dir/registry.log" 2>/dev/null | head -n1 || true)"
        [[ -n $port ]] && break
        if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then
            cat "$dir/registry.log" >&2
            REGISTRY_PID=""
            die "docker-registry exited during startup (log above)"
        fi
        sleep 0.1
    done
    [[ -n $port ]] || { cat "$dir/registry.log" >&2; stop_registry; die "docker-registry did not report a port"; }
    REGISTRY_PORT="$port"
    REGISTRY_HOST="127.0.0.1:$port"
    REGISTRY_URL="http://$REGISTRY_HOST"
    for ((i = 0; i < 100; i++)); do
        curl -sf -o /dev/null "$REGISTRY_URL/v2/" && break
        sleep 0.1
    done
    curl -sf -o /dev/null "$REGISTRY_URL/v2/" || { stop_registry; die "registry at $REGISTRY_URL does not answer /v2/"; }
    export REGISTRY_URL REGISTRY_HOST REGISTRY_PORT REGISTRY_PID REGISTRY_DIR
    log "registry: $REGISTRY_URL (pid $REGISTRY_PID, storage $dir/storage)"
}

# stop_registry — stop the registry started by start_registry (only that pid).
stop_registry() {
    local pid="$REGISTRY_PID" i
    [[ -n $pid ]] || return 0
    REGISTRY_PID=""
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- pushes

# blob_digest FILE — prints sha256:<hex>.
blob_digest() {
    local h
    h="$(sha256sum "${1:?blob_digest FILE}")" || return 1
    printf 'sha256:%s\n' "${h%% *}"
}

file_size() { stat -c %s "${1:?file_size FILE}"; }

# _abs_location URL — make a Location header absolute.
_abs_location() {
    case "$1" in
    http://* | https://*) printf '%s\n' "$1" ;;
    /*) printf '%s%s\n' "$REGISTRY_URL" "$1" ;;
    *) printf '%s/%s\n' "$REGISTRY_URL" "$1" ;;
    esac
}

# push_blob REPO FILE [DIGEST] — monolithic upload (POST, then PUT ?digest=);
# prints the digest. Skipped when the registry already has the blob.
# Pass DIGEST (from blob_digest) to keep hashing out of a timed section.
# The body is streamed with `curl -T` (same request as --data-binary @FILE, but
# curl does not load a 1 GiB file into memory first).
push_blob() {
    local repo="${1:?push_blob REPO FILE}" file="${2:?push_blob REPO FILE}" digest="${3:-}" loc hdr code
    [[ -n $REGISTRY_URL ]] || die "push_blob: no registry (call start_registry first)"
    [[ -n $digest ]] || digest="$(blob_digest "$file")"
    if curl -sf -o /dev/null -I "$REGISTRY_URL/v2/$repo/blobs/$digest"; then
        printf '%s\n' "$digest"
        return 0
    fi
    hdr="$(curl -sS -o /dev/null -D - -X POST "$REGISTRY_URL/v2/$repo/blobs/uploads/")" ||
        { log "push_blob: POST uploads failed for $repo"; return 1; }
    loc="$(awk 'tolower($1) == "location:" { print $2 }' <<<"$hdr" | tr -d '\r')"
    [[ -n $loc ]] || { log "push_blob: no Location in POST response for $repo:"; log "$hdr"; return 1; }
    loc="$(_abs_location "$loc")"
    case "$loc" in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
    code="$(curl -sS -o "$REGISTRY_DIR/build/.put-response" -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/octet-stream' -H 'Expect:' -T "$file" "$loc")" || code=000
    if [[ $code != 201 ]]; then
        log "push_blob: PUT $repo $digest answered HTTP $code: $(cat "$REGISTRY_DIR/build/.put-response" 2>/dev/null)"
        return 1
    fi
    printf '%s\n' "$digest"
}

# push_manifest REPO REF MEDIATYPE FILE — PUT a manifest by tag or digest;
# prints its digest (checked against the registry's Docker-Content-Digest).
# A copy is kept in $REGISTRY_DIR/build/manifests/<hex>.json (make_index reads sizes there).
push_manifest() {
    local repo="${1:?push_manifest REPO REF MEDIATYPE FILE}" ref="${2:?}" mt="${3:?}" file="${4:?}"
    local digest hdr code got
    digest="$(blob_digest "$file")"
    hdr="$(curl -sS -o "$REGISTRY_DIR/build/.put-response" -D - -X PUT \
        -H "Content-Type: $mt" --data-binary @"$file" "$REGISTRY_URL/v2/$repo/manifests/$ref")" ||
        { log "push_manifest: PUT $repo:$ref failed"; return 1; }
    code="$(awk 'NR == 1 { print $2 }' <<<"$hdr")"
    if [[ $code != 201 ]]; then
        log "push_manifest: PUT $repo:$ref answered HTTP $code: $(cat "$REGISTRY_DIR/build/.put-response")"
        return 1
    fi
    got="$(awk 'tolower($1) == "docker-content-digest:" { print $2 }' <<<"$hdr" | tr -d '\r')"
    if [[ -n $got && $got != "$digest" ]]; then
        log "push_manifest: registry says $got, file hashes to $digest"
        return 1
    fi
    mkdir -p "$REGISTRY_DIR/build/manifests"
    cp "$file" "$REGISTRY_DIR/build/manifests/${digest#sha256:}.json"
    printf '%s\n' "$digest"
}

# tag_many REPO MEDIATYPE FILE PREFIX COUNT — PUT the same manifest under the
# tags PREFIX0001..PREFIX<COUNT> in one curl process (one connection).
tag_many() {
    local repo="${1:?}" mt="${2:?}" file="${3:?}" prefix="${4:?}" count="${5:?}" cfg i n
    cfg="$REGISTRY_DIR/build/tag_many.curl"
    : >"$cfg"
    for ((i = 1; i <= count; i++)); do
        printf 'url = "%s/v2/%s/manifests/%s%04d"\noutput = "/dev/null"\n' "$REGISTRY_URL" "$repo" "$prefix" "$i" >>"$cfg"
    done
    curl -sS --fail -X PUT -H "Content-Type: $mt" --data-binary @"$file" -K "$cfg" ||
        { log "tag_many: some PUTs failed"; return 1; }
    n="$(curl -sf "$REGISTRY_URL/v2/$repo/tags/list" | jq --arg p "$prefix" '[.tags[] | select(startswith($p))] | length')"
    [[ $n -ge $count ]] || { log "tag_many: registry lists $n tags with prefix $prefix, wanted $count"; return 1; }
}

# make_layer OUT NAME — a small, reproducible gzip tar (`tar -tzf OUT` lists it)
# with a few text files that mention NAME. Prints OUT.
make_layer() {
    local out="${1:?make_layer OUT NAME}" name="${2:?make_layer OUT NAME}" d safe
    safe="${name//[^A-Za-z0-9._-]/_}"
    d="$(mktemp -d)"
    mkdir -p "$d/etc/regfs-sample" "$d/usr/share/doc/$safe"
    printf 'regfs sample layer: %s\n' "$name" >"$d/etc/regfs-sample/$safe.txt"
    printf '# %s\n\nA small layer made by scripts/lib.sh for regfs demos and tests.\n' "$name" \
        >"$d/usr/share/doc/$safe/README.md"
    seq 1 2000 | sed "s/^/$safe line /" >"$d/usr/share/doc/$safe/lines.txt"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$d" -cf - . | gzip -n >"$out"
    rm -rf "$d"
    printf '%s\n' "$out"
}

# make_image REPO TAG LAYER_FILE... — push the layers, an OCI config and an OCI
# image manifest; tag it TAG ("-" pushes by digest only). Prints the manifest digest.
# Platform from IMAGE_OS (linux), IMAGE_ARCH (amd64), IMAGE_VARIANT (none).
make_image() {
    local repo="${1:?make_image REPO TAG LAYER...}" tag="${2:?make_image REPO TAG LAYER...}"
    shift 2
    local build="$REGISTRY_DIR/build" layers_json="[]" diffids_json="[]" history_json="[]"
    local f d diffid size mt cfg man cdigest n=0
    for f in "$@"; do
        [[ -f $f ]] || { log "make_image: no such layer file $f"; return 1; }
        d="$(push_blob "$repo" "$f")" || return 1
        size="$(file_size "$f")"
        if [[ "$(head -c2 "$f" | od -An -tx1 | tr -d ' \n')" == 1f8b ]]; then
            mt="$MT_OCI_LAYER_GZIP"
            diffid="sha256:$(gzip -dc "$f" | sha256sum | cut -d' ' -f1)"
        else
            mt="$MT_OCI_LAYER_TAR"
            diffid="$d"
        fi
        n=$((n + 1))
        layers_json="$(jq -c --arg mt "$mt" --arg d "$d" --argjson s "$size" \
            '. + [{mediaType: $mt, digest: $d, size: $s}]' <<<"$layers_json")"
        diffids_json="$(jq -c --arg d "$diffid" '. + [$d]' <<<"$diffids_json")"
        history_json="$(jq -c --arg c "scripts/lib.sh: layer $n ($(basename "$f"))" \
            '. + [{created: "2024-01-01T00:00:00Z", created_by: $c}]' <<<"$history_json")"
    done
    cfg="$(mktemp "$build/config.XXXXXX")"
    jq -cn --arg os "${IMAGE_OS:-linux}" --arg arch "${IMAGE_ARCH:-amd64}" --arg variant "${IMAGE_VARIANT:-}" \
        --arg repo "$repo" --argjson diffids "$diffids_json" --argjson history "$history_json" '
        {created: "2024-01-01T00:00:00Z", architecture: $arch, os: $os}
        + (if $variant != "" then {variant: $variant} else {} end)
        + {config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    Cmd: ["/bin/sh"], Labels: {"org.regfs.sample": $repo}},
           rootfs: {type: "layers", diff_ids: $diffids},
           history: $history}' >"$cfg"
    cdigest="$(push_blob "$repo" "$cfg")" || return 1
    man="$(mktemp "$build/manifest.XXXXXX")"
    jq -cn --arg mt "$MT_OCI_MANIFEST" --arg cmt "$MT_OCI_CONFIG" --arg cd "$cdigest" \
        --argjson cs "$(file_size "$cfg")" --argjson layers "$layers_json" '
        {schemaVersion: 2, mediaType: $mt,
         config: {mediaType: $cmt, digest: $cd, size: $cs},
         layers: $layers}' >"$man"
    local ref="$tag"
    [[ $tag == - ]] && ref="$(blob_digest "$man")"
    push_manifest "$repo" "$ref" "$MT_OCI_MANIFEST" "$man" || return 1
    rm -f "$cfg" "$man"
}

# make_index REPO TAG — a multi-arch OCI index tagged TAG whose children are
# small images (one layer each) for linux/amd64, linux/arm64/v8 and linux/arm/v7.
# Prints the index digest.
make_index() {
    local repo="${1:?make_index REPO TAG}" tag="${2:?make_index REPO TAG}"
    local build="$REGISTRY_DIR/build" plat os arch variant layer d entries="[]" idx
    for plat in linux/amd64 linux/arm64/v8 linux/arm/v7; do
        IFS=/ read -r os arch variant <<<"$plat"
        layer="$(make_layer "$build/layer-${plat//\//-}.tar.gz" "$repo $plat")"
        d="$(IMAGE_OS="$os" IMAGE_ARCH="$arch" IMAGE_VARIANT="$variant" make_image "$repo" - "$layer")" || return 1
        entries="$(jq -c --arg mt "$MT_OCI_MANIFEST" --arg d "$d" \
            --argjson s "$(file_size "$build/manifests/${d#sha256:}.json")" \
            --arg os "$os" --arg arch "$arch" --arg variant "$variant" '
            . + [{mediaType: $mt, digest: $d, size: $s,
                  platform: ({architecture: $arch, os: $os}
                             + (if $variant != "" then {variant: $variant} else {} end))}]' <<<"$entries")"
    done
    idx="$(mktemp "$build/index.XXXXXX")"
    jq -cn --arg mt "$MT_OCI_INDEX" --argjson m "$entries" '{schemaVersion: 2, mediaType: $mt, manifests: $m}' >"$idx"
    push_manifest "$repo" "$tag" "$MT_OCI_INDEX" "$idx" || return 1
    rm -f "$idx"
}

# ---------------------------------------------------------------- regfs mounts

REGFS_MOUNT_PID=""
REGFS_MOUNTPOINT=""

# is_mounted DIR — true when DIR is a mount point.
# Works on a dead FUSE mount too (never stats DIR itself).
is_mounted() {
    local p="${1:?}" d
    p="${p%/}"
    d="$(cd "$(dirname "$p")" 2>/dev/null && pwd -P)" || return 1
    d="${d%/}/$(basename "$p")"
    awk -v d="$d" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# regfs_mount_fg MOUNTPOINT CACHE_DIR LOG_FILE [EXTRA_OPTS...] — start
# `regfs mount --foreground` in the background (so its pid is the daemon's:
# REGFS_MOUNT_PID) against $REGISTRY_URL; wait until MOUNTPOINT/.regfs/stats is readable.
regfs_mount_fg() {
    local mnt="${1:?}" cache="${2:?}" logf="${3:?}" i
    shift 3
    [[ -x $REGFS_BIN ]] || die "no regfs binary at $REGFS_BIN (cargo build --release)"
    mkdir -p "$mnt" "$cache"
    is_mounted "$mnt" && die "$mnt is already a mount point"
    "$REGFS_BIN" mount --foreground --cache-dir "$cache" "$@" "$REGISTRY_URL" "$mnt" >"$logf" 2>&1 &
    REGFS_MOUNT_PID=$!
    REGFS_MOUNTPOINT="$mnt"
    for ((i = 0; i < 200; i++)); do
        if is_mounted "$mnt" && [[ -r $mnt/.regfs/stats ]]; then
            return 0
        fi
        if ! kill -0 "$REGFS_MOUNT_PID" 2>/dev/null; then
            tail -n 30 "$logf" >&2
            REGFS_MOUNT_PID=""
            log "regfs mount exited before the mount was ready (log above)"
            return 1
        fi
        sleep 0.05
    done
    tail -n 30 "$logf" >&2
    log "regfs mount at $mnt not ready after 10 s"
    regfs_unmount "$mnt"
    return 1
}

# regfs_unmount [MOUNTPOINT] — fusermount3 -u (retried, then lazy), then wait for
# the daemon started by regfs_mount_fg to exit (TERM, then KILL, by its pid only).
regfs_unmount() {
    local mnt="${1:-$REGFS_MOUNTPOINT}" pid="$REGFS_MOUNT_PID" i
    if [[ -n $mnt ]] && is_mounted "$mnt"; then
        for ((i = 0; i < 20; i++)); do
            fusermount3 -u "$mnt" 2>/dev/null && break
            sleep 0.25
        done
        is_mounted "$mnt" && { log "unmount of $mnt busy; lazy unmount"; fusermount3 -uz "$mnt" 2>/dev/null || true; }
    fi
    if [[ -n $pid && $mnt == "$REGFS_MOUNTPOINT" ]]; then
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "regfs daemon $pid still running 10 s after unmount; sending TERM"
            kill "$pid" 2>/dev/null || true
            sleep 1
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null || true
        REGFS_MOUNT_PID=""
        REGFS_MOUNTPOINT=""
    fi
}

# regfs_daemon_pids CACHE_DIR — pids of regfs processes started with exactly
# `--cache-dir CACHE_DIR` (a unique temp dir), for daemons started in background mode.
regfs_daemon_pids() {
    local cache="${1:?}" f pid args
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"
        pid="${pid%/cmdline}"
        args="$(tr '\0' '\n' 2>/dev/null <"$f")" || continue # the process may be gone
        grep -qxF -- "$cache" <<<"$args" || continue
        grep -qxF -- "--cache-dir" <<<"$args" || continue
        grep -q 'regfs' <<<"$args" || continue
        printf '%s\n' "$pid"
    done
}

# regfs_stat MOUNTPOINT NAME — one counter from MOUNTPOINT/.regfs/stats (empty if absent).
regfs_stat() {
    awk -v n="${2:?}" '$1 == n { print $2 }' "${1:?}/.regfs/stats"
}
