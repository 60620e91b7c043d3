#!/usr/bin/env bash
# `make docker-test`: the image and the compose file, tried for real.
#
# Installs Debian's docker.io, docker-compose and debootstrap where missing, starts a Docker
# engine if none runs, builds the image (with a local base image and wheel mirror where the
# defaults cannot be reached), runs it until healthy, uploads an image and finds it by a text
# search, finds it again from a new container on the same named volume, then runs
# `docker-compose up -d` / `down` with the project's compose file. Everything it starts
# (containers, volumes, networks, the HTTP mirror, the engine) is removed by id or pid on exit;
# the images stay as the build cache.
#
# FUSION_SKIP_DOCKER=1 skips it explicitly; otherwise a machine without an engine fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${FUSION_IMAGE:-fusion-search:latest}
BASE_IMAGE=${FUSION_BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=fusion-search-base:bookworm
TORCH_INDEX=${FUSION_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
HEALTH_TIMEOUT=${FUSION_HEALTH_TIMEOUT:-180}

log() { printf '[docker-test %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ ${FUSION_SKIP_DOCKER:-} == 1 ]]; then
    log "skipped: FUSION_SKIP_DOCKER=1"
    exit 0
fi

# root runs commands as they are, anyone else through passwordless sudo (or not at all)
if [[ $(id -u) == 0 ]]; then sudo_=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo_=(sudo -n)
else sudo_=(false); fi
as_root() { "${sudo_[@]}" "$@"; }

work=$(mktemp -d /tmp/fusion-docker-test.XXXXXX)
tag=dt$$
containers=() volumes=() compose_up=0 mirror_pid='' dockerd_pid='' pip_extra='' pip_trusted=''
declare -A timings=()

cleanup() {
    local rc=$?
    set +e
    if ((${#containers[@]})); then docker rm -f -v "${containers[@]}" >/dev/null 2>&1; fi
    if ((compose_up)); then compose down -v --remove-orphans >/dev/null 2>&1; fi
    if ((${#volumes[@]})); then docker volume rm "${volumes[@]}" >/dev/null 2>&1; fi
    if [[ -n $mirror_pid ]]; then kill "$mirror_pid" 2>/dev/null; wait "$mirror_pid" 2>/dev/null; fi
    # images replaced by this build (the tagged ones stay: they are the next run's cache)
    docker image prune -f --filter label=org.opencontainers.image.title=fusion-search >/dev/null 2>&1
    if [[ -n $dockerd_pid ]]; then
        log "stopping the engine this run started (pid $dockerd_pid)"
        as_root kill -TERM "$dockerd_pid"
        for _ in $(seq 60); do as_root kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. tools -------------------------------------------------------------------------------
missing=()
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
compose() { "${compose_cmd[@]}" -p "fusion-$tag" --env-file "$work/compose.env" -f docker-compose.yml "$@"; }

# --- 2. the engine --------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    log "using the running Docker engine"
elif [[ ${sudo_[0]:-} == false ]]; then
    die "no Docker engine answers ($(docker info 2>&1 | grep -m1 -iE 'cannot|permission|error' || true)) and this user cannot start one (not root, no passwordless sudo). Set FUSION_SKIP_DOCKER=1 to skip explicitly."
else
    # No init system here: run dockerd ourselves. Without iptables (none in this sandbox) the
    # containers have no route out, and published ports still work through docker-proxy.
    for driver in overlay2 vfs; do
        # started directly (not through a function, which would fork a subshell): $! is
        # dockerd's own pid, or sudo's, which passes the TERM signal on
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
            break
        fi
        as_root kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=''
    done
    if [[ -z $dockerd_pid ]]; then
        tail -5 "$work/dockerd.log" >&2 || true
        die "no Docker engine runs and dockerd could not be started (needs root, or passwordless sudo, and a kernel that allows overlay2 or vfs; log above). Set FUSION_SKIP_DOCKER=1 to skip explicitly."
    fi
fi
timings[engine]=$SECONDS

# --- 3. base image and torch wheels ---------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE: present"
elif [[ $BASE_IMAGE == python:3.11-slim ]] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$LOCAL_BASE
    log "base image: $LOCAL_BASE (made earlier: python:3.11-slim could not be pulled)"
elif timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE: pulled"
elif [[ $BASE_IMAGE == python:3.11-slim ]]; then
    log "python:3.11-slim cannot be pulled: making $LOCAL_BASE with debootstrap"
    as_root scripts/make-base-image.sh "$LOCAL_BASE" >&2 || die "could not make the local base image"
    BASE_IMAGE=$LOCAL_BASE
else
    die "base image $BASE_IMAGE cannot be pulled"
fi
timings[base]=$SECONDS

wanted_index=$TORCH_INDEX
if curl -fsS -m 10 -o /dev/null "$TORCH_INDEX/torch/" 2>/dev/null; then
    log "torch wheels: $TORCH_INDEX"
else
    # This machine's pip may know local mirrors (file:// indexes): serve them on loopback for the
    # build (which runs on the host network), the one with torch as TORCH_INDEX.
    mkdir -p "$work/mirror"
    torch_url='' extra_urls=() n=0
    for url in $(pip config list 2>/dev/null | sed -nE "s/^[^=]*index-url='(.*)'$/\1/p"); do
        dir=${url#file://}
        [[ $url == file://* && -d $dir ]] || continue
        ln -s "$(dirname "$dir")" "$work/mirror/m$n"
        served="http://127.0.0.1:PORT/m$n/$(basename "$dir")"
        if [[ -z $torch_url && -d $dir/torch ]]; then torch_url=$served; else extra_urls+=("$served"); fi
        n=$((n + 1))
    done
    if [[ -n $torch_url ]]; then
        # A fixed port: the URLs are build arguments, so they are part of the layer cache key.
        port=${FUSION_MIRROR_PORT:-38765}
        if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
            port=$(free_port)
            log "port ${FUSION_MIRROR_PORT:-38765} is taken: mirror on $port (the torch layer will be rebuilt)"
        fi
        python3 -m http.server --bind 127.0.0.1 --directory "$work/mirror" "$port" \
            >"$work/mirror.log" 2>&1 &
        mirror_pid=$!
        for _ in $(seq 40); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.25; done
        TORCH_INDEX=${torch_url/PORT/$port} pip_extra=${extra_urls[*]//PORT/$port}
        pip_trusted=127.0.0.1
        log "torch wheels: $wanted_index unreachable; local mirror on 127.0.0.1:$port (pid $mirror_pid)"
    else
        TORCH_INDEX=https://pypi.org/simple
        log "torch wheels: $wanted_index unreachable and no local mirror: PyPI's torch (CUDA build, several GB)"
    fi
fi

# The same four for `docker build` and compose's build (so that one finds the other's layers).
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX=$TORCH_INDEX"
            --build-arg "PIP_EXTRA_INDEX_URL=$pip_extra" --build-arg "PIP_TRUSTED_HOST=$pip_trusted")

# --- 4. build -------------------------------------------------------------------------------
log "building $IMAGE"
DOCKER_BUILDKIT=0 docker build --network host "${build_args[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; die "docker build failed"; }
timings[build]=$SECONDS
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')
log "built $IMAGE ($size)"

# --- 5. refusals: open writes on the container's network, a pretrained tag without network ---
refusal() {  # expected text, docker run arguments... -> dies unless the start is refused with it
    local expected=$1 out rc=0
    shift
    out=$(timeout 120 docker run --rm "$@" "$IMAGE" 2>&1) || rc=$?
    [[ $rc == 2 && $out == *"$expected"* && $out != *Traceback* ]] \
        || { echo "$out" | tail -20 >&2; die "expected a refused start (status 2) saying '$expected', got status $rc"; }
}
refusal "refusing to start: --host 0.0.0.0"
refusal "cannot load model 'ViT-B-32' with pretrained tag 'laion2b_s34b_b79k'" --network none \
    -e FUSION_API_KEY=k -e FUSION_MODEL=ViT-B-32 -e FUSION_PRETRAINED=laion2b_s34b_b79k
log "refused, each with its message: no key on 0.0.0.0; a pretrained tag without network"

# --- 6. run, upload, search, new container on the same volume -------------------------------
volumes_before=$(docker volume ls -q | sort)
key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
volume=fusion-$tag-data
docker volume create "$volume" >/dev/null
volumes+=("$volume")

wait_healthy() {  # container id -> 0 once healthy, dies with its log otherwise
    local cid=$1 state start=$SECONDS
    while ((SECONDS - start < HEALTH_TIMEOUT)); do
        state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid")
        case $state in
            "running healthy") log "container ${cid:0:12} healthy after $((SECONDS - start)) s"; return 0 ;;
            running*) sleep 1 ;;
            *) docker logs --tail 30 "$cid" >&2; die "container ${cid:0:12} is $state" ;;
        esac
    done
    docker logs --tail 30 "$cid" >&2
    die "container ${cid:0:12} not healthy after $HEALTH_TIMEOUT s"
}

start_container() {  # host port -> $cid, a container on the test volume (removed on exit)
    cid=$(docker run -d --label "fusion-docker-test=$tag" -p "127.0.0.1:$1:8000" \
        -v "$volume:/data" -e FUSION_API_KEY="$key" --health-interval=1s "$IMAGE" \
        2>"$work/run.err") || { cat "$work/run.err" >&2; die "docker run failed"; }
    containers+=("$cid")
}

json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

search_red_circle() {  # port -> id of the first hit for "a red circle" among the test's tag
    curl -fsS -X POST "http://127.0.0.1:$1/api/v1/search/text" -H 'Content-Type: application/json' \
        -d '{"query": "a red circle", "k": 3, "tags": ["docker-test"]}' \
        | json 'd["hits"][0]["id"] if d["hits"] else "none"'
}

port=$(free_port)
start_container "$port"
wait_healthy "$cid"
timings[first_start]=$SECONDS

docker exec "$cid" python -c "
import sys
from PIL import Image, ImageDraw
im = Image.new('RGB', (64, 64), (128, 128, 128))
ImageDraw.Draw(im).ellipse((14, 14, 50, 50), fill=(220, 30, 30))
im.save(sys.stdout.buffer, 'PNG')" >"$work/red-circle.png"
code=$(curl -s -o /dev/null -w '%{http_code}' -F "files=@$work/red-circle.png;type=image/png" \
    "http://127.0.0.1:$port/api/v1/images")
[[ $code == 401 ]] || die "upload without the key answered $code, expected 401"
id=$(curl -fsS -H "X-API-Key: $key" -F "files=@$work/red-circle.png;type=image/png" \
    -F caption="a red circle" -F tags=docker-test "http://127.0.0.1:$port/api/v1/images" \
    | json 'd["items"][0]["id"]')
found=$(search_red_circle "$port")
[[ $found == "$id" ]] || die "text search found $found, expected the upload $id"
log "uploaded image $id (401 without the key) and found it by text search"

docker rm -f -v "$cid" >/dev/null
port=$(free_port)
start_container "$port"
wait_healthy "$cid"
found=$(search_red_circle "$port")
[[ $found == "$id" ]] || die "after replacing the container: search found $found, expected $id"
log "a new container on volume $volume finds image $id again"
docker rm -f -v "$cid" >/dev/null
timings[volume]=$SECONDS

# --- 7. docker-compose up -d / down with the project's compose file -------------------------
cport=$(free_port)
# Only these settings (a .env in the checkout would otherwise apply): the build settings above
# (so `up --build` finds every layer of the image just built in the cache), a free port, no
# demo seeding.
cat >"$work/compose.env" <<EOF
FUSION_IMAGE=$IMAGE
FUSION_BASE_IMAGE=$BASE_IMAGE
FUSION_TORCH_INDEX=$TORCH_INDEX
FUSION_PIP_EXTRA_INDEX_URL=$pip_extra
FUSION_PIP_TRUSTED_HOST=$pip_trusted
FUSION_BUILD_NETWORK=host
FUSION_PORT=$cport
FUSION_DEMO=false
EOF
compose_up=1
compose up -d --build >"$work/compose.log" 2>&1 || { tail -30 "$work/compose.log" >&2; die "compose up --build failed"; }
ccid=$(compose ps -q fusion-search)
published=$(docker port "$ccid" 8000/tcp)
[[ $published == "127.0.0.1:$cport" ]] || die "compose publishes port 8000 on '$published', expected 127.0.0.1:$cport only"
wait_healthy "$ccid"
for path in /health / /docs; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$cport$path")
    [[ $code == 200 ]] || die "compose: GET $path answered $code"
done
# Swagger UI from the service itself: every script and style /docs names is local and served
assets=$(curl -fsS "http://127.0.0.1:$cport/docs" \
    | python3 -c 'import re, sys; print(*re.findall(r"(?:src|href)=\"([^\"]+)\"", sys.stdin.read()))')
[[ -n $assets ]] || die "compose: /docs names no assets"
for asset in $assets; do
    [[ $asset == /* ]] || die "compose: /docs loads $asset from outside the service"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$cport$asset")
    [[ $code == 200 ]] || die "compose: GET $asset (named by /docs) answered $code"
done
log "compose: /health, / and /docs (with its $(wc -w <<<"$assets") local assets) answer 200 on 127.0.0.1:$cport"
compose down -v --remove-orphans >"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; die "compose down failed"; }
compose_up=0
left=$(docker ps -aq --filter "label=com.docker.compose.project=fusion-$tag")
[[ -z $left ]] || die "compose down left containers: $left"
timings[compose]=$SECONDS
docker volume rm "$volume" >/dev/null
volumes=()
left=$(comm -13 <(echo "$volumes_before") <(docker volume ls -q | sort))
[[ -z $left ]] || die "volumes left behind: $left"

log "passed: engine ${timings[engine]} s, base ${timings[base]} s, build ${timings[build]} s ($size), first healthy ${timings[first_start]} s, volume ${timings[volume]} s, compose ${timings[compose]} s (cumulative)"
