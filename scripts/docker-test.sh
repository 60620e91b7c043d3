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
HEALTH_TIMEOUT=${FUSION_HEALTH_TIMEOUT:-180}

# log/die, root or sudo, the engine, base image and wheel mirror: shared with scripts/scale-test.sh
LOG_NAME=docker-test
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh
docker_lib_init

tag=dt$$
compose_project=fusion-$tag compose_file=docker-compose.yml
containers=() volumes=() compose_up=0
declare -A timings=()

cleanup() {
    local rc=$?
    set +e
    if ((${#containers[@]})); then docker rm -f -v "${containers[@]}" >/dev/null 2>&1; fi
    if ((compose_up)); then compose down -v --remove-orphans >/dev/null 2>&1; fi
    if ((${#volumes[@]})); then docker volume rm "${volumes[@]}" >/dev/null 2>&1; fi
    cleanup_engine_side
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. tools -------------------------------------------------------------------------------
install_tools

# --- 2. the engine --------------------------------------------------------------------------
start_engine
timings[engine]=$SECONDS

# --- 3. base image and torch wheels ---------------------------------------------------------
pick_base_image BASE_IMAGE python:3.11-slim
timings[base]=$SECONDS

if ! torch_wheels; then
    log "torch wheels: $TORCH_INDEX unreachable and no local mirror: PyPI's torch (CUDA build, several GB)"
    TORCH_INDEX=https://pypi.org/simple
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
    # as long as a start may take (HEALTH_TIMEOUT): checking the settings imports torch (the
    # FUSION_DEVICE check), which took 60-90 s on a loaded 2-core machine, over the 120 s it had
    out=$(timeout "$HEALTH_TIMEOUT" docker run --rm "$@" "$IMAGE" 2>&1) || rc=$?
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
{ build_env; echo "FUSION_PORT=$cport"; echo "FUSION_DEMO=false"; } >"$work/compose.env"
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
