#!/usr/bin/env bash
# Runs the whole stack locally: PostgreSQL and Redis (installed and started
# when missing), the database and its migrations, then keel-api, keel-worker
# and keel-scheduler with one combined, prefixed log. Ctrl-C stops all three.
# RELEASE=1 builds optimised binaries.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
ensure_services
cd "$KEEL_ROOT"

profile=debug; build_flags=()
if [[ ${RELEASE:-} == 1 ]]; then profile=release; build_flags=(--release); fi
say "building ($profile)"
cargo build "${build_flags[@]}" --bins
bin="$KEEL_ROOT/target/$profile"

mkdir -p "$KEEL_DATA/outbox"
export PORT=${PORT:-8000}
"$bin/keel-api" migrate

# A first superadmin, once: its password is printed below and nowhere else.
superadmin_note="superadmin: $bin/keel-api admin create-superuser  (one exists already)"
if "$bin/keel-api" admin stats --json | grep -q '"superadmin":0'; then
  password=$("$bin/keel-api" gen-secret | cut -c1-20)
  printf '%s\n' "$password" | "$bin/keel-api" admin create-superuser \
    --username admin --email admin@example.com --password-stdin >/dev/null
  superadmin_note="superadmin: admin / $password  (shown once; change it)"
fi

# Prefixes each line of a process's output with its coloured name.
prefix() {
  local name=$1 colour=$2
  while IFS= read -r line; do printf '\033[%sm%-9s|\033[0m %s\n' "$colour" "$name" "$line"; done
}

pids=()
# Each process gets its own session, so a terminal's Ctrl-C reaches only this
# script, which then stops each process once (a second signal would skip draining).
start() {
  local name=$1 colour=$2; shift 2
  setsid "$@" > >(trap '' INT TERM; prefix "$name" "$colour") 2>&1 &
  pids+=($!)
}
stop() {
  # Signal the processes before anything else: the terminal (or a pipe we
  # write to) may already be gone, and a failed echo must not skip this.
  trap - INT TERM EXIT
  trap '' PIPE
  set +e
  kill -TERM "${pids[@]}" 2>/dev/null
  say "stopping"
  wait "${pids[@]}" 2>/dev/null
  say "stopped"
}
trap stop INT TERM EXIT

start api 36 env METRICS_PORT="${API_METRICS_PORT:-9100}" "$bin/keel-api"
start worker 35 env METRICS_PORT="${WORKER_METRICS_PORT:-9101}" "$bin/keel-worker"
start scheduler 33 env METRICS_PORT="${SCHEDULER_METRICS_PORT:-9102}" "$bin/keel-scheduler"

scheme=http; [[ -n ${TLS_CERT_FILE:-} ]] && scheme=https
base="$scheme://localhost:$PORT"
for _ in $(seq 1 120); do
  port_open "$PORT" && break
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a process exited at start; see its log above"; done
  sleep 0.5
done
cat >&2 <<MSG

  Keel is running.
    API        $base/api/v1
    health     $base/health
    docs       $base/docs  (Redoc: $base/redoc, OpenAPI: $base/openapi.json)
    dashboard  $base/dashboard  (admins: sign in with the superadmin below)
    metrics    API :${API_METRICS_PORT:-9100}/metrics · worker :${WORKER_METRICS_PORT:-9101}/metrics · scheduler :${SCHEDULER_METRICS_PORT:-9102}/metrics
    email      ${SMTP_HOST:+SMTP $SMTP_HOST}${SMTP_HOST:-file outbox $KEEL_DATA/outbox/ (SMTP_HOST unset)}
    $superadmin_note
  Ctrl-C stops all three.

MSG
# Any one process ending ends the stack, so a crash is never silent.
wait -n "${pids[@]}" || true
