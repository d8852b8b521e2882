#!/usr/bin/env bash
# Two trainer containers as two torchrun nodes publish one bundle that the api replicas serve
# through nginx (docker-compose.yml's profile ddp; deploy/docker-test.sh calls this once the
# images are built, and it runs alone against built images too):
#   1. ddp-data writes criteo-like Parquet shards, then trainer-0 and trainer-1 join one c10d
#      rendezvous (trainer-0:29400) and train with DDP on gloo, each process its own shards;
#   2. both nodes must exit 0, each log must show its rank of a world of 2, exactly one node
#      (rank 0's) must have published, and the models volume must hold exactly version 1;
#   3. api replicas and nginx start on that bundle; /model through nginx names it and /predict
#      scores a generated row;
#   4. always tears its stack down (down -v), also on failure.
#
# Settings (environment): DDP_PROJECT_NAME (afmddp: the compose project, not docker-test.sh's),
# DDP_HTTP_PORT (8090: nginx's host port), AFM_TRAIN_IMAGE, AFM_SERVE_IMAGE (the :latest tags), AFM_DDP_ROWS (20000),
# AFM_DDP_NAME (ddp-afm), DDP_TIMEOUT (600 s for data and training), HEALTH_TIMEOUT (300 s),
# COMPOSE (docker-compose, else "docker compose"), KEEP_STACK=1 to leave it up.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
log() { printf '[ddp-check +%ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

export COMPOSE_PROJECT_NAME=${DDP_PROJECT_NAME:-afmddp}
export AFM_HTTP_PORT=${DDP_HTTP_PORT:-8090}
export AFM_TRAIN_IMAGE=${AFM_TRAIN_IMAGE:-afm-train:latest}
export AFM_SERVE_IMAGE=${AFM_SERVE_IMAGE:-afm-serve:latest}
export AFM_DDP_NAME=${AFM_DDP_NAME:-ddp-afm}
export AFM_MODEL_NAME=$AFM_DDP_NAME  # what the api replicas serve
export AFM_API_REPLICAS=${AFM_API_REPLICAS:-2}
# creating a container from the train image copies it on some storage drivers (vfs): minutes
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}
DDP_TIMEOUT=${DDP_TIMEOUT:-600}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-300}
PY=${PYTHON:-python3}
URL="http://localhost:$AFM_HTTP_PORT"
if [[ -n ${COMPOSE:-} ]]; then
  read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
  COMPOSE_CMD=(docker-compose)
else
  COMPOSE_CMD=(docker compose)
fi
compose() { "${COMPOSE_CMD[@]}" --profile ddp "$@"; }

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $rc -ne 0 ]]; then
    log "failed (rc $rc); last logs:"
    timeout 60 "${COMPOSE_CMD[@]}" --profile ddp logs --no-color --tail 40 || true
  fi
  if [[ ${KEEP_STACK:-0} == 1 ]]; then
    log "KEEP_STACK=1: remove it with: COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME ${COMPOSE_CMD[*]} --profile ddp down -v"
  else
    timeout 600 "${COMPOSE_CMD[@]}" --profile ddp down -v --remove-orphans --timeout 5 >/dev/null 2>&1 ||
      log "down -v failed"
  fi
  [[ -z ${EMPTY_DATA_DIR:-} ]] || rmdir "$EMPTY_DATA_DIR" 2>/dev/null || true
  log "total $(($(date +%s) - T0))s, exit $rc"
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# the default trainer's data folder is not used here: an empty one, rather than Docker making ./data
if [[ -z ${AFM_DATA_DIR:-} ]]; then
  AFM_DATA_DIR=$(mktemp -d /tmp/afm-ddp-check-data.XXXXXX)
  EMPTY_DATA_DIR=$AFM_DATA_DIR
fi
export AFM_DATA_DIR

timeout 600 "${COMPOSE_CMD[@]}" --profile ddp down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# ------------------------------------------------------------------ 1. data, then the two nodes
log "make-data, then trainer-0 and trainer-1 as torchrun nodes (c10d at trainer-0:29400)"
compose up -d --no-build trainer-0 trainer-1 || die "compose up of the ddp nodes"
deadline=$(($(date +%s) + DDP_TIMEOUT))
for node in trainer-0 trainer-1; do
  id=$(compose ps -q "$node")
  [[ -n $id ]] || die "$node did not start"
  while [[ $(docker inspect -f '{{.State.Status}}' "$id") != exited ]]; do
    (($(date +%s) < deadline)) || die "$node still running after ${DDP_TIMEOUT}s"
    sleep 3
  done
  code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
  [[ $code == 0 ]] || die "$node exited $code"
done
log "both nodes exited 0 after $(($(date +%s) - T0))s"

# ---------------------------------------------------------------------- 2. one world, one bundle
node0=$(compose ps -q trainer-0)
node1=$(compose ps -q trainer-1)
publishers=0
for id in "$node0" "$node1"; do
  node=$(docker inspect -f '{{.Name}}' "$id")
  lines=$(docker logs "$id" 2>&1 | tr '\r' '\n')
  # each process logs the rank it drew in the rendezvous, of a world of 2
  grep -E "^rank [01] of 2 |vocabulary pass|epoch [0-9]+:|test:|^published" <<<"$lines" | sed "s|^|    $node: |" || true
  grep -qE "^rank [01] of 2 " <<<"$lines" || die "$node did not join a world of 2"
  if grep -q "^published" <<<"$lines"; then publishers=$((publishers + 1)); fi
done
[[ $publishers == 1 ]] || die "$publishers nodes published: rank 0 alone must"
# read from the exited node's mount (docker cp): no further container, each is a copy of the image
versions=$(docker cp "$node0:/models/$AFM_DDP_NAME" - | tar -tf - |
  awk -F/ '$2 ~ /^[0-9]+$/ { print $2 }' | sort -u | tr '\n' ' ')
[[ $versions == "1 " ]] || die "expected exactly version 1 of $AFM_DDP_NAME in the models volume, found: '$versions'"
log "one bundle: $AFM_DDP_NAME/1"
# the exited nodes' containers go (each is a copy of the train image on some storage drivers);
# the models volume stays for the api replicas
timeout 600 "${COMPOSE_CMD[@]}" --profile ddp rm -fs ddp-data trainer-0 trainer-1 >/dev/null 2>&1 ||
  log "could not remove the exited nodes' containers"

# ---------------------------------------------------------------- 3. served through nginx
log "api x$AFM_API_REPLICAS and nginx on $URL serving $AFM_DDP_NAME"
timeout "$HEALTH_TIMEOUT" "${COMPOSE_CMD[@]}" up -d --no-build --no-deps --scale "api=$AFM_API_REPLICAS" api nginx ||
  die "compose up of api and nginx"
deadline=$(($(date +%s) + HEALTH_TIMEOUT))
until "$PY" - "$URL" "$AFM_DDP_NAME" <<'EOF'
import json, sys, urllib.request
url, name = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url + "/readyz", timeout=3) as response:
        ready = response.status == 200
    with urllib.request.urlopen(url + "/model", timeout=3) as response:
        model = json.load(response)
except Exception:
    sys.exit(1)
sys.exit(0 if ready and model.get("name") == name else 1)
EOF
do
  (($(date +%s) < deadline)) || die "nginx did not serve $AFM_DDP_NAME within ${HEALTH_TIMEOUT}s"
  sleep 2
done
"$PY" - "$URL" "$AFM_DDP_NAME" <<'EOF' || die "/model and /predict through nginx"
import json, sys, urllib.request
url, name = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url + "/model", timeout=10) as response:
    model = json.load(response)
assert model["name"] == name and str(model["version"]) == "1", model
fields = [f["name"] for f in model["fields"]]
row = {f: (1.0 if f.startswith("I") else "68fd1e64") for f in fields}
request = urllib.request.Request(
    url + "/predict", json.dumps({"instances": [row]}).encode(), {"Content-Type": "application/json"}
)
with urllib.request.urlopen(request, timeout=10) as response:
    scores = json.load(response)["scores"]
assert len(scores) == 1 and 0.0 < scores[0] < 1.0, scores
print(f"    served {name}/{model['version']} through nginx: fields {len(fields)}, score {scores[0]:.4f}")
EOF
log "PASS: two torchrun nodes in two containers published $AFM_DDP_NAME/1, served through nginx"
