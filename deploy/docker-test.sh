#!/usr/bin/env bash
# End-to-end test of the Docker deployment (`make docker-test`; CI's .ci/run calls it):
#   1. brings up a Docker engine with ../shared/scripts/docker-up.sh where that script exists
#      (installs docker.io and docker-compose, starts dockerd, builds the local base images);
#   2. builds the serve and train images (torch from local wheels when /opt/wheels has them);
#   3. docker-compose up: the trainer publishes the demo bundle, then 2 api replicas, then nginx;
#   4. waits (bounded) until nginx and both replicas are healthy;
#   5. /model, /predict and /explain through nginx on localhost:8080, both replicas seen;
#   6. the SIGTERM test: one replica stopped as compose stops it (docker stop) while clients keep
#      the replicas saturated through nginx, then started again; no request may fail;
#   7. the kill test: one replica killed under a steady stream of requests, none may fail;
#   8. the `ddp` profile (deploy/ddp_check.sh): two trainer containers as torchrun nodes publish
#      one bundle that the api replicas serve through nginx, under a project of its own;
#   9. always tears the stack down (docker-compose down -v), also on failure or Ctrl-C.
#
# Settings (environment): AFM_HTTP_PORT (8080), COMPOSE_PROJECT_NAME (afmtest), AFM_API_REPLICAS (2),
# AFM_TRAIN_ARGS (the synthetic demo, 2 epochs), AFM_DATA_DIR (an empty temporary folder),
# HEALTH_TIMEOUT (300 s, compose up to healthy), BUILD_TIMEOUT (1800 s per image), DOCKER_UP (path
# of docker-up.sh), WHEELS_DIR (/opt/wheels), COMPOSE (docker-compose, else "docker compose"),
# SIGTERM_CLIENTS (64), KILL_REQUESTS (400), KILL_RATE (40/s), KEEP_STACK=1 to leave the stack up (then: down -v yourself).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
log() { printf '[docker-test +%ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

DOCKER_UP=${DOCKER_UP:-$ROOT/../shared/scripts/docker-up.sh}
WHEELS_DIR=${WHEELS_DIR:-/opt/wheels}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-300}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
REPLICAS=${AFM_API_REPLICAS:-2}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-afmtest}
export AFM_HTTP_PORT=${AFM_HTTP_PORT:-8080}
export AFM_API_REPLICAS=$REPLICAS
export AFM_SERVE_IMAGE=${AFM_SERVE_IMAGE:-afm-serve:latest}
export AFM_TRAIN_IMAGE=${AFM_TRAIN_IMAGE:-afm-train:latest}
export AFM_MODEL_NAME=${AFM_MODEL_NAME:-demo-afm}
# The demo data set as in the compose default, with fewer epochs: the test checks the deployment,
# not the model, and CI time is bounded.
export AFM_TRAIN_ARGS=${AFM_TRAIN_ARGS:---dataset synthetic --task ctr --model afm --epochs 2}
# This engine has no buildx; the classic builder is what runs here (BuildKit works too elsewhere).
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
# The host's python3 runs the checks (standard library only), never the project's venv.
PY=${PYTHON:-python3}
URL="http://localhost:$AFM_HTTP_PORT"

# ---------------------------------------------------------------------------------- 1. engine
if [[ -f $DOCKER_UP ]]; then
  log "engine: $DOCKER_UP"
  timeout 900 bash "$DOCKER_UP"
elif ! docker info >/dev/null 2>&1; then
  die "no Docker engine answers and there is no $DOCKER_UP to start one"
fi
if [[ -n ${COMPOSE:-} ]]; then
  read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
  COMPOSE_CMD=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
else
  die "neither docker-compose nor docker compose is installed"
fi
compose() { "${COMPOSE_CMD[@]}" "$@"; }
log "engine $(docker version --format '{{.Server.Version}}'), compose $(compose version --short 2>/dev/null || echo '?')"

# ---------------------------------------------------------------------------------- 2. images
# Local wheels (torch's CPU build on these machines) go into the build context's deploy/wheels/
# (ignored by git); the train stage installs with --find-links there.
shopt -s nullglob
for wheel in "$WHEELS_DIR"/*.whl; do
  target="deploy/wheels/$(basename "$wheel")"
  cmp -s "$wheel" "$target" 2>/dev/null || ln -f "$wheel" "$target" 2>/dev/null || cp -p "$wheel" "$target"
done
shopt -u nullglob

build() {  # build <target> <tag>
  local started=$(date +%s) logfile
  logfile=$(mktemp /tmp/afm-build-$1.XXXXXX.log)
  if ! timeout "$BUILD_TIMEOUT" docker build --network host --target "$1" -t "$2" . >"$logfile" 2>&1; then
    tail -n 40 "$logfile"
    die "docker build --target $1 failed (full log: $logfile)"
  fi
  log "built $2 (target $1) in $(($(date +%s) - started))s ($(grep -c 'Using cache' "$logfile" || true) steps from the cache)"
  rm -f "$logfile"
}
build serve "$AFM_SERVE_IMAGE"
build train "$AFM_TRAIN_IMAGE"
for image in "$AFM_SERVE_IMAGE" "$AFM_TRAIN_IMAGE"; do
  log "image $image: $(docker image ls --format '{{.Size}}' "$image")"
done

# ------------------------------------------------------------------------------------ 3. stack
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 ]]; then
    log "failed (rc $rc); last logs of the stack:"
    timeout 60 "${COMPOSE_CMD[@]}" ps || true
    timeout 60 "${COMPOSE_CMD[@]}" logs --no-color --tail 30 || true
  fi
  if [[ ${KEEP_STACK:-0} == 1 ]]; then
    log "KEEP_STACK=1: the stack stays up; remove it with: COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME ${COMPOSE_CMD[*]} down -v"
  else
    log "tearing down"
    timeout 120 "${COMPOSE_CMD[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || log "down -v failed"
  fi
  [[ -z ${EMPTY_DATA_DIR:-} ]] || rmdir "$EMPTY_DATA_DIR" 2>/dev/null || true
  log "total $(($(date +%s) - T0))s, exit $rc"
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# The synthetic set needs no data folder: mount an empty one rather than have Docker create ./data.
if [[ -z ${AFM_DATA_DIR:-} ]]; then
  AFM_DATA_DIR=$(mktemp -d /tmp/afm-docker-test-data.XXXXXX)
  EMPTY_DATA_DIR=$AFM_DATA_DIR
fi
export AFM_DATA_DIR

timeout 120 "${COMPOSE_CMD[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true  # leftovers
log "compose up: trainer, then api x$REPLICAS, then nginx on $URL"
up_started=$(date +%s)
# v1 waits here for the trainer to finish and for api to be healthy before starting nginx.
timeout "$HEALTH_TIMEOUT" "${COMPOSE_CMD[@]}" up -d --no-build --scale "api=$REPLICAS" ||
  die "compose up did not finish within ${HEALTH_TIMEOUT}s"
trainer=$(compose ps -q trainer)
[[ $(docker inspect -f '{{.State.ExitCode}}' "$trainer") == 0 ]] || die "the trainer failed"
docker logs "$trainer" 2>&1 | grep -E "test:|published" | sed 's/^/    trainer: /' || true

# ---------------------------------------------------------------------------------- 4. health
wait_healthy() {  # wait_healthy <seconds>: every api replica healthy and nginx's /readyz 200
  local started deadline healthy code id
  started=$(date +%s)
  deadline=$((started + $1))
  while :; do
    healthy=0
    for id in $(compose ps -q api); do
      if [[ $(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id") == healthy ]]; then
        healthy=$((healthy + 1))
      fi
    done
    code=$("$PY" -c "import sys, urllib.request
try: print(urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=3).status)
except Exception as e: print(getattr(e, 'code', 0))" "$URL")
    if [[ $healthy -ge $REPLICAS && $code == 200 ]]; then break; fi
    (($(date +%s) < deadline)) || die "not healthy within $1s (healthy api: $healthy of $REPLICAS, nginx /readyz: $code)"
    sleep 2
  done
  log "healthy: $healthy api replicas, nginx /readyz 200 (after $(($(date +%s) - started))s)"
}
wait_healthy $((up_started + HEALTH_TIMEOUT - $(date +%s)))

# ----------------------------------------------------------------------------------- 5. smoke
"$PY" deploy/smoke_check.py --url "$URL" --replicas "$REPLICAS" || die "smoke check through nginx"

# --------------------------------------------------------------------------------- 6. SIGTERM
# One replica stopped as compose stops it (SIGTERM, SIGKILL after stop_grace_period) while more
# clients than the replicas compute at once keep them saturated through nginx; then started again.
# No request may fail (deploy/sigterm_check.py says what counts as failed).
mapfile -t replicas < <(compose ps -q api)
stopped=${replicas[1]:?fewer than two api replicas running}
grace=$(docker inspect -f '{{with .Config.StopTimeout}}{{.}}{{end}}' "$stopped")
grace=${grace:-$(compose config | sed -n 's/^ *stop_grace_period: *\([0-9]*\)s$/\1/p' | head -n 1)}
log "SIGTERM test: docker stop --time ${grace:?no stop_grace_period} ${stopped:0:12} under ${SIGTERM_CLIENTS:-64} clients, then docker start"
timeout 400 "$PY" deploy/sigterm_check.py --url "$URL" --container "$stopped" --grace "$grace" \
  --clients "${SIGTERM_CLIENTS:-64}" || die "SIGTERM test"
wait_healthy 120

# ------------------------------------------------------------------------------------ 7. kill
mapfile -t replicas < <(compose ps -q api)
victim=${replicas[0]:?no api replica running}
victim_host=$(docker inspect -f '{{.Config.Hostname}}' "$victim")
log "kill test: docker kill ${victim:0:12} (X-Served-By $victim_host) under a stream of requests"
timeout 300 "$PY" deploy/kill_replica_check.py --url "$URL" --kill "docker kill $victim" --victim "$victim_host" \
  --requests "${KILL_REQUESTS:-400}" --rate "${KILL_RATE:-40}" --concurrency 4 || die "kill test"

# ---------------------------------------------------------------------------------- 8. ddp
# The one-node stack goes first (unless kept): under vfs each container holds a copy of its
# image, and the ddp check starts three more of the 2 GB train image.
if [[ ${KEEP_STACK:-0} != 1 ]]; then
  log "the one-node stack down before the ddp check"
  timeout 120 "${COMPOSE_CMD[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || log "down -v failed"
fi
timeout 1500 bash deploy/ddp_check.sh || die "two trainer containers as torchrun nodes (deploy/ddp_check.sh)"
log "PASS: images built, stack healthy, requests served by $REPLICAS replicas through nginx, no request lost to a stopped or a killed replica, a bundle trained by two torchrun nodes served"
