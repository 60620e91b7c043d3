#!/usr/bin/env bash
# `make scale-test`: docker-compose.scale.yml (PostgreSQL + 2 API replicas + nginx), tried for real.
#
# Starts a Docker engine if none runs (as scripts/docker-test.sh does), builds the three images
# (a local Debian bookworm base image and the wheel mirrors pip knows where registries cannot be
# reached), brings the file up with `--scale api=2`, uploads through nginx (401 without the key),
# searches through nginx until both replicas have answered and found the upload, serves its file
# from both, kills one replica with SIGKILL and checks that searches and a new upload still
# answer through nginx, then `down -v`. Everything it starts is removed on exit (the images stay
# as the build cache).
#
# FUSION_SKIP_DOCKER=1 skips it explicitly; otherwise a machine without an engine fails here.
# FUSION_SCALE_NO_BUILD=1 runs the images already there (FUSION_IMAGE: the API's) without building.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${FUSION_IMAGE:-fusion-search:latest}
BASE_IMAGE=${FUSION_BASE_IMAGE:-python:3.11-slim}
DEBIAN_IMAGE=${FUSION_DEBIAN_IMAGE:-debian:bookworm-slim}
HEALTH_TIMEOUT=${FUSION_HEALTH_TIMEOUT:-240}
SEARCHES=${FUSION_SCALE_SEARCHES:-20}

# log/die, root or sudo, the engine, base images and wheel mirror: shared with scripts/docker-test.sh
LOG_NAME=scale-test
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh
docker_lib_init

project=fusion-scale$$
compose_project=$project compose_file=docker-compose.scale.yml
compose_up=0
declare -A timings=()

cleanup() {
    local rc=$?
    set +e
    if ((compose_up)); then
        ((rc == 0)) || compose logs --no-color --tail 20 >&2 2>/dev/null
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    cleanup_engine_side
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. tools and the engine ------------------------------------------------------------------
install_tools
# a busy engine takes more than docker-compose's default 60 s to create a container
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-300}
start_engine
timings[engine]=$SECONDS

# --- 2. base images and torch wheels ----------------------------------------------------------
pick_base_image BASE_IMAGE python:3.11-slim
pick_base_image DEBIAN_IMAGE debian:bookworm-slim
log "base images: $BASE_IMAGE (API), $DEBIAN_IMAGE (PostgreSQL, nginx)"

if [[ ${FUSION_SCALE_NO_BUILD:-} != 1 ]]; then
    torch_wheels || die "$TORCH_INDEX unreachable and no local wheel mirror has torch"
fi

# --- 3. build ---------------------------------------------------------------------------------
key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
pgpass=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
port=$(free_port)
{
    build_env
    echo "FUSION_DEBIAN_IMAGE=$DEBIAN_IMAGE"
    echo "FUSION_PORT=$port"
    echo "FUSION_API_KEY=$key"
    echo "FUSION_PG_PASSWORD=$pgpass"
} >"$work/compose.env"
if [[ ${FUSION_SCALE_NO_BUILD:-} == 1 ]]; then
    # the images as they are (made by an earlier run): a check of the compose file alone
    for image in "$IMAGE" fusion-search-postgres:latest fusion-search-nginx:latest; do
        docker image inspect "$image" >/dev/null 2>&1 || die "FUSION_SCALE_NO_BUILD=1 but $image is missing"
    done
    log "FUSION_SCALE_NO_BUILD=1: the images as they are, not rebuilt"
else
    log "building the images (API, PostgreSQL, nginx)"
    compose build >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; die "compose build failed"; }
fi
timings[build]=$SECONDS

# --- 4. up with two replicas --------------------------------------------------------------------
volumes_before=$(docker volume ls -q | sort)
compose_up=1
compose up -d --no-build --scale api=2 >"$work/up.log" 2>&1 || { tail -30 "$work/up.log" >&2; die "compose up failed"; }
mapfile -t replicas < <(compose ps -q api)
((${#replicas[@]} == 2)) || die "expected 2 api replicas, compose runs ${#replicas[@]}"
published=$(docker port "$(compose ps -q nginx)" 8080/tcp)
[[ $published == "127.0.0.1:$port" ]] || die "nginx is published on '$published', expected 127.0.0.1:$port only"
[[ -z $(docker port "$(compose ps -q postgres)") ]] || die "PostgreSQL publishes a port"
base=http://127.0.0.1:$port
start=$SECONDS
until [[ $(curl -s -o /dev/null -w '%{http_code}' "$base/health") == 200 ]]; do
    ((SECONDS - start < HEALTH_TIMEOUT)) || die "nginx /health not 200 after $HEALTH_TIMEOUT s"
    sleep 1
done
declare -A replica_of=()   # address on the compose network -> container id
for cid in "${replicas[@]}"; do
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid")
    replica_of[$ip:8000]=$cid
done
timings[up]=$SECONDS
log "up: postgres, 2 replicas (${!replica_of[*]}), nginx on 127.0.0.1:$port"

# --- 5. upload through nginx, search until both replicas have answered ---------------------------
docker exec "${replicas[0]}" python -c "
import sys
from PIL import Image, ImageDraw
for colour, name in (((220, 30, 30), 'red'), ((30, 30, 220), 'blue')):
    im = Image.new('RGB', (64, 64), (128, 128, 128))
    ImageDraw.Draw(im).ellipse((14, 14, 50, 50), fill=colour)
    im.save(f'/tmp/{name}.png', 'PNG')"
docker cp "${replicas[0]}:/tmp/red.png" "$work/red.png" && docker cp "${replicas[0]}:/tmp/blue.png" "$work/blue.png"

upload() {  # file caption -> id of the stored item (through nginx, with the key)
    curl -fsS -H "X-API-Key: $key" -F "files=@$1;type=image/png" -F caption="$2" \
        -F tags=scale-test "$base/api/v1/images" | json 'd["items"][0]["id"]'
}
code=$(curl -s -o /dev/null -w '%{http_code}' -F "files=@$work/red.png;type=image/png" "$base/api/v1/images")
[[ $code == 401 ]] || die "upload without the key through nginx answered $code, expected 401"
id=$(upload "$work/red.png" "a red circle") || die "upload through nginx failed"

search() {  # query -> $hit (first hit's id) and $addr (the replica that answered, through nginx)
    local code tried
    code=$(curl -sS -D "$work/headers" -o "$work/body" -w '%{http_code}' -X POST \
        "$base/api/v1/search/text" -H 'Content-Type: application/json' \
        -d "{\"query\": \"$1\", \"k\": 3, \"tags\": [\"scale-test\"]}") || code=000
    [[ $code == 200 ]] || { cat "$work/body" >&2 2>/dev/null; die "search through nginx answered $code"; }
    hit=$(json 'd["hits"][0]["id"] if d["hits"] else "none"' <"$work/body")
    # nginx names every replica it tried ("a:8000, b:8000"): the last one answered
    tried=$(sed -nE 's/^X-Fusion-Upstream: *(.*)$/\1/Ip' "$work/headers" | tr -d '\r')
    addr=${tried##*, }
}
# the replica that did not take the upload follows the change log: a few tenths of a second
start=$SECONDS
declare -A found_on=()
while ((${#found_on[@]} < 2)); do
    ((SECONDS - start < 30)) || die "after 30 s only ${!found_on[*]} found upload $id"
    search "a red circle"
    [[ -n ${replica_of[$addr]:-} ]] || die "a search was answered by '$addr', not a replica"
    [[ $hit == "$id" ]] && found_on[$addr]=1
    sleep 0.2
done
declare -A answers=()
for _ in $(seq "$SEARCHES"); do
    search "a red circle"
    [[ $hit == "$id" ]] || die "search through nginx ($addr) found $hit, expected upload $id"
    answers[$addr]=$((${answers[$addr]:-0} + 1))
done
((${#answers[@]} == 2)) || die "$SEARCHES searches were answered by ${!answers[*]} only"
summary=$(for a in "${!answers[@]}"; do printf '%s:%s ' "${replica_of[$a]:0:12}" "${answers[$a]}"; done)
log "upload $id (401 without the key); $SEARCHES searches through nginx all found it, answered by $summary"
# its file, from the shared files volume, whichever replica serves it
for _ in 1 2 3 4; do
    curl -fsS -o "$work/back.png" "$base/api/v1/images/$id/file" || die "GET /api/v1/images/$id/file failed"
    cmp -s "$work/back.png" "$work/red.png" || die "the file served for $id differs from the upload"
done
timings[search]=$SECONDS

# --- 6. one replica killed: searches and uploads still answer ---------------------------------------
victim=${replicas[0]} survivor=${replicas[1]}
docker update --restart=no "$victim" >/dev/null   # stays dead for this check
docker kill "$victim" >/dev/null
killed_at=$SECONDS
declare -A after=()
for _ in $(seq "$SEARCHES"); do
    search "a red circle"
    [[ $hit == "$id" ]] || die "after the kill: search found $hit, expected $id"
    after[$addr]=1
done
[[ ${!after[*]} == "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$survivor"):8000" ]] \
    || die "after the kill searches were answered by ${!after[*]}, expected the survivor only"
id2=$(upload "$work/blue.png" "a blue circle") || die "upload through nginx after the kill failed"
search "a blue circle"
[[ $hit == "$id2" ]] || die "after the kill: the new upload $id2 is not found (got $hit)"
timings[kill]=$SECONDS
log "replica ${victim:0:12} killed (SIGKILL): $SEARCHES searches and an upload ($id2) answered by ${survivor:0:12} in $((SECONDS - killed_at)) s"

# --- 7. down -v ------------------------------------------------------------------------------------
compose down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; die "compose down failed"; }
compose_up=0
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
[[ -z $left ]] || die "compose down left containers: $left"
left=$(comm -13 <(echo "$volumes_before") <(docker volume ls -q | sort))
[[ -z $left ]] || die "volumes left behind: $left"
timings[down]=$SECONDS

log "passed: engine ${timings[engine]} s, build ${timings[build]} s, up ${timings[up]} s, search ${timings[search]} s, kill ${timings[kill]} s, down ${timings[down]} s (cumulative)"
