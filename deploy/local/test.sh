#!/usr/bin/env bash
# The whole test suite, against real PostgreSQL and Redis (installed and
# started when missing) and a real SMTP server (aiosmtpd, installed when missing). Extra arguments go to the test runner.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
ensure_services
ensure_smtp_test_server
ensure_python_tools
ensure_browser_tools
cd "$KEEL_ROOT"

# Tests create a database each (keel_test_*); sweep what earlier runs left.
stale=$(psql "$KEEL_ADMIN_DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'keel\_test\_%'")
if [[ -n $stale ]]; then
  say "dropping $(wc -l <<<"$stale") test databases left by earlier runs"
  while read -r db; do
    psql "$KEEL_ADMIN_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  done <<<"$stale"
fi

export KEEL_TEST_DATABASE_URL=$KEEL_ADMIN_DATABASE_URL
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run --workspace"
  cargo nextest run --workspace --no-fail-fast "$@"
else
  say "cargo test --workspace (install cargo-nextest for parallel, per-process tests)"
  cargo test --workspace --no-fail-fast "$@"
fi
