# shellcheck shell=bash
# The Docker side that scripts/docker-test.sh and scripts/scale-test.sh share: sourced, not run.
#
#   LOG_NAME=docker-test               # the log prefix; the work dir is /tmp/fusion-$LOG_NAME.XXXXXX
#   source scripts/docker-lib.sh
#   docker_lib_init                    # FUSION_SKIP_DOCKER=1 exits 0; sets sudo_, $work
#   compose_project=... compose_file=...   # what compose() runs on (env file: $work/compose.env)
#   trap cleanup EXIT                  # the caller's cleanup ends with cleanup_engine_side
#   install_tools; start_engine
#   pick_base_image BASE_IMAGE python:3.11-slim
#   torch_wheels || ...                # reachable index, or the local mirror, or status 1
#
# Everything it starts (the wheel mirror, the engine) is recorded by pid in mirror_pid and
# dockerd_pid, and stopped by pid in cleanup_engine_side. Runs from the repository root.

LOCAL_BASE=fusion-search-base:bookworm
TORCH_INDEX=${FUSION_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
: "${LOG_NAME:?set LOG_NAME before sourcing scripts/docker-lib.sh}"
mirror_pid='' dockerd_pid='' pip_extra='' pip_trusted='' compose_project='' compose_file=''

log() { printf '[%s %4ss] %s\n' "$LOG_NAME" "$SECONDS" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

docker_lib_init() {  # -> exits 0 when FUSION_SKIP_DOCKER=1; else sets sudo_ and $work
    if [[ ${FUSION_SKIP_DOCKER:-} == 1 ]]; then
        log "skipped: FUSION_SKIP_DOCKER=1"
        exit 0
    fi
    # root runs commands as they are, anyone else through passwordless sudo (or not at all)
    if [[ $(id -u) == 0 ]]; then sudo_=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo_=(sudo -n)
    else sudo_=(false); fi
    work=$(mktemp -d "/tmp/fusion-$LOG_NAME.XXXXXX")
}
as_root() { "${sudo_[@]}" "$@"; }

cleanup_engine_side() {  # the end of a cleanup: mirror, replaced images, the engine, $work
    if [[ -n $mirror_pid ]]; then kill "$mirror_pid" 2>/dev/null; wait "$mirror_pid" 2>/dev/null; fi
    # images replaced by this build (the tagged ones stay: they are the next run's cache)
    docker image prune -f --filter label=org.opencontainers.image.title=fusion-search >/dev/null 2>&1
    if [[ -n $dockerd_pid ]]; then
        log "stopping the engine this run started (pid $dockerd_pid)"
        as_root kill -TERM "$dockerd_pid"
        for _ in $(seq 60); do as_root kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -rf "$work"
}

install_tools() {  # Debian's docker.io, docker-compose and debootstrap where missing; sets compose_cmd
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (Debian packages)"
        { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq "${missing[@]}"; } >"$work/apt.log" 2>&1 \
            || { tail -5 "$work/apt.log" >&2; \
                 die "could not install ${missing[*]} with apt (root or passwordless sudo needed); set FUSION_SKIP_DOCKER=1 to skip this check on a machine without Docker"; }
    fi
    if command -v docker-compose >/dev/null; then compose_cmd=(docker-compose); else compose_cmd=(docker compose); fi
}
compose() { "${compose_cmd[@]}" -p "$compose_project" --env-file "$work/compose.env" -f "$compose_file" "$@"; }

start_engine() {  # the running engine, or dockerd started here (pid in dockerd_pid)
    if docker info >/dev/null 2>&1; then
        log "using the running Docker engine"
        return 0
    fi
    [[ ${sudo_[0]:-} != false ]] \
        || die "no Docker engine answers ($(docker info 2>&1 | grep -m1 -iE 'cannot|permission|error' || true)) and this user cannot start one (not root, no passwordless sudo). Set FUSION_SKIP_DOCKER=1 to skip explicitly."
    # No init system here: run dockerd ourselves. Without iptables (none in this sandbox) the
    # containers have no route out, and published ports still work through docker-proxy.
    local driver
    for driver in overlay2 vfs; do
        # started directly (not through as_root, a function whose `&` would fork a subshell): $!
        # is dockerd's own pid, or sudo's, which passes the TERM signal on
        "${sudo_[@]}" dockerd --storage-driver="$driver" --iptables=false --ip-forward=false \
            --ip-masq=false >"$work/dockerd.log" 2>&1 &
        dockerd_pid=$!
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        if docker info >/dev/null 2>&1; then
            log "started dockerd (pid $dockerd_pid, storage driver $driver)"
            return 0
        fi
        as_root kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=''
    done
    tail -5 "$work/dockerd.log" >&2 || true
    die "no Docker engine runs and dockerd could not be started (needs root, or passwordless sudo, and a kernel that allows overlay2 or vfs; log above). Set FUSION_SKIP_DOCKER=1 to skip explicitly."
}

pick_base_image() {  # VARNAME DEFAULT: the image VARNAME names, present or pulled; where it is the
    # DEFAULT and cannot be pulled, the local Debian bookworm image (made once with debootstrap)
    local -n image=$1
    local default=$2
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "base image $image: present"
    elif [[ $image == "$default" ]] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        image=$LOCAL_BASE
        log "base image: $LOCAL_BASE (made earlier: $default could not be pulled)"
    elif timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
        log "base image $image: pulled"
    elif [[ $image == "$default" ]]; then
        log "$default cannot be pulled: making $LOCAL_BASE with debootstrap"
        as_root scripts/make-base-image.sh "$LOCAL_BASE" >&2 || die "could not make the local base image"
        image=$LOCAL_BASE
    else
        die "base image $image cannot be pulled"
    fi
}

torch_wheels() {  # TORCH_INDEX when it answers; else the local file:// indexes pip knows, served on
    # loopback for the build (which runs on the host network): TORCH_INDEX becomes the one with
    # torch, pip_extra the others, mirror_pid the server's pid. Status 1 when neither is there.
    local wanted_index=$TORCH_INDEX torch_url='' extra_urls=() n=0 url dir served port
    if curl -fsS -m 10 -o /dev/null "$TORCH_INDEX/torch/" 2>/dev/null; then
        log "torch wheels: $TORCH_INDEX"
        return 0
    fi
    mkdir -p "$work/mirror"
    for url in $(pip config list 2>/dev/null | sed -nE "s/^[^=]*index-url='(.*)'$/\1/p"); do
        dir=${url#file://}
        [[ $url == file://* && -d $dir ]] || continue
        ln -s "$(dirname "$dir")" "$work/mirror/m$n"
        served="http://127.0.0.1:PORT/m$n/$(basename "$dir")"
        if [[ -z $torch_url && -d $dir/torch ]]; then torch_url=$served; else extra_urls+=("$served"); fi
        n=$((n + 1))
    done
    [[ -n $torch_url ]] || return 1
    # A fixed port: the URLs are build arguments, so they are part of the layer cache key (the
    # same URLs from both scripts, so the two share the image's layers).
    port=${FUSION_MIRROR_PORT:-38765}
    if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
        port=$(free_port)
        log "port ${FUSION_MIRROR_PORT:-38765} is taken: mirror on $port (the torch layer will be rebuilt)"
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$work/mirror" "$port" \
        >"$work/mirror.log" 2>&1 &
    mirror_pid=$!
    for _ in $(seq 80); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.25; done
    TORCH_INDEX=${torch_url/PORT/$port} pip_extra=${extra_urls[*]//PORT/$port}
    pip_trusted=127.0.0.1
    log "torch wheels: $wanted_index unreachable; local mirror on 127.0.0.1:$port (pid $mirror_pid)"
}

build_env() {  # -> the compose env lines both builds need: the same build arguments as
    # `docker build` (so that each finds the other's layers) and a host-network build
    cat <<EOF
FUSION_IMAGE=${IMAGE:?}
FUSION_BASE_IMAGE=${BASE_IMAGE:?}
FUSION_TORCH_INDEX=$TORCH_INDEX
FUSION_PIP_EXTRA_INDEX_URL=$pip_extra
FUSION_PIP_TRUSTED_HOST=$pip_trusted
FUSION_BUILD_NETWORK=host
EOF
}
