#!/usr/bin/env bash
# The whole test suite, against real PostgreSQL and Redis (installed and
# started when missing) and a real SMTP server (aiosmtpd, installed when missing). Extra arguments go to the test runner.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
ensure_services
ensure_smtp_test_server
ensure_fault_tools
ensure_python_tools
ensure_browser_tools
ensure_oidc_test_provider
cd "$KEEL_ROOT"

# A fault test killed mid-way leaves its own PostgreSQL (and data directory) behind.
pkill -KILL -f -- '-D /tmp/keel-pg-' 2>/dev/null || true
rm -rf /tmp/keel-pg-*

# Tests create a database each (keel_test_*); sweep what earlier runs left.
stale=$(psql "$KEEL_ADMIN_DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'keel\_test\_%'")
if [[ -n $stale ]]; then
  say "dropping $(wc -l <<<"$stale") test databases left by earlier runs"
  while read -r db; do
    psql "$KEEL_ADMIN_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  done <<<"$stale"
fi

export KEEL_TEST_DATABASE_URL=$KEEL_ADMIN_DATABASE_URL
# Every log of the run, and the secrets its tests used, land here; the
# secrets check (the `hygiene` test) reads them after everything else ran.
export KEEL_TEST_LOG_DIR=$KEEL_ROOT/target/test-logs
rm -rf "$KEEL_TEST_LOG_DIR"
mkdir -p "$KEEL_TEST_LOG_DIR"

status=0
if cargo nextest --version >/dev/null 2>&1; then
  # `.config/nextest.toml` leaves the secrets check out of every run but its own.
  say "cargo nextest run --workspace $*"
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
  if [[ $# -eq 0 ]]; then
    say "the secrets check, over the logs of that run"
    # The whole workspace, as above: the same features, so nothing is rebuilt.
    cargo nextest run --workspace --ignore-default-filter -E 'binary(hygiene)' || status=$?
  fi
else
  say "cargo test --workspace (install cargo-nextest for parallel, per-process tests)"
  cargo test --workspace --no-fail-fast "$@" -- --skip the_suite_logged_no_secret || status=$?
  [[ $# -gt 0 ]] || cargo test -p keel-api --test hygiene || status=$?
fi
exit "$status"
