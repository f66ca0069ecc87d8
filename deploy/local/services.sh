# shellcheck shell=bash
# Sourced by run.sh and test.sh: makes sure PostgreSQL and Redis are up on
# this machine, installing them from the OS packages (apt) and starting them
# when they are missing. Services already running are used as they are.
# DATABASE_URL / REDIS_URL pointing at another host are left alone.

KEEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEEL_DATA="$KEEL_ROOT/.data"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root or sudo to run: $*"
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2 i
  for i in $(seq 1 60); do port_open "$port" && return 0; sleep 0.5; done
  die "$what did not come up on 127.0.0.1:$port"
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "$* is missing and there is no apt-get here; install it by hand"
  if [[ -z $APT_UPDATED ]]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Loads .env (without overriding the environment), as the binaries do.
load_dotenv() {
  [[ -f "$KEEL_ROOT/.env" ]] || return 0
  local line key
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[2]}
    [[ -n ${!key+x} ]] && continue
    local value=${BASH_REMATCH[3]}
    value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
    export "$key=$value"
  done < "$KEEL_ROOT/.env"
}

# Whether a URL's host is this machine.
is_local_url() { [[ $1 =~ ^[a-z]+://([^@/]*@)?(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?(/|$) ]]; }

ensure_postgres() {
  if ! is_local_url "$DATABASE_URL"; then
    say "DATABASE_URL points elsewhere; not managing PostgreSQL"
    return 0
  fi
  if port_open 5432; then
    say "PostgreSQL is running on 127.0.0.1:5432"
  else
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
      say "creating PostgreSQL $version cluster 'main'"
      as_root pg_createcluster "$version" main >/dev/null
    fi
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_port 5432 PostgreSQL
  fi
  command -v psql >/dev/null || apt_install postgresql-client
  # A fresh Debian cluster asks TCP clients for a password; give the
  # postgres role the one in our default URL (only when we can and must).
  if ! psql "$KEEL_ADMIN_DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    if [[ $KEEL_ADMIN_DATABASE_URL == "$KEEL_DEFAULT_ADMIN_URL" ]]; then
      say "setting the local postgres role's password to the development default"
      as_root runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null
    fi
    psql "$KEEL_ADMIN_DATABASE_URL" -Atqc 'SELECT 1' >/dev/null || die "cannot log in to PostgreSQL as in DATABASE_URL"
  fi
}

ensure_redis() {
  if ! is_local_url "$REDIS_URL"; then
    say "REDIS_URL points elsewhere; not managing Redis"
    return 0
  fi
  if port_open 6379; then
    say "Redis is running on 127.0.0.1:6379"
    return 0
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$KEEL_DATA/redis"
  say "starting Redis (no persistence; data dir $KEEL_DATA/redis)"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir "$KEEL_DATA/redis" --logfile "$KEEL_DATA/redis/redis.log" >/dev/null
  wait_for_port 6379 Redis
}

# The URLs every script and binary uses, unless set in the environment or .env.
KEEL_DEFAULT_ADMIN_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
load_dotenv
export DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/keel}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
# The same server's maintenance database, for creating and dropping databases.
KEEL_ADMIN_DATABASE_URL=$(printf '%s' "$DATABASE_URL" | sed -E 's#^([a-z]+://[^/]*)/?[^?]*#\1/postgres#')

# The tests' SMTP server: Debian's aiosmtpd, run by the system python (tests
# call /usr/bin/python3, so a pyenv or venv on PATH does not hide it).
ensure_smtp_test_server() {
  if ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
    say "installing python3-aiosmtpd (the tests' SMTP server)"
    apt_install python3-aiosmtpd
  fi
}

# The fault tests: libfaketime for clock skew, and PostgreSQL's server
# binaries for a server of their own to stop and restart.
ensure_fault_tools() {
  if ! compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null; then
    say "installing faketime (the clock-skew tests)"
    apt_install faketime
  fi
  if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    say "installing postgresql (the fault tests start a server of their own)"
    apt_install postgresql
  fi
}

ensure_services() {
  ensure_postgres
  ensure_redis
}

# The Python tools of deploy/local/requirements.txt (validators and linters),
# in a virtualenv under .data/venv, reinstalled when that file changes. Its bin
# directory is exported as KEEL_TOOLS_BIN and put first on PATH.
ensure_python_tools() {
  local venv="$KEEL_DATA/venv" requirements="$KEEL_ROOT/deploy/local/requirements.txt"
  local stamp="$venv/.requirements"
  if [[ ! -x $venv/bin/pip ]]; then
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    say "creating the tools virtualenv in $venv"
    /usr/bin/python3 -m venv "$venv"
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    say "installing the Python tools ($(grep -cv '^#' "$requirements") packages)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
  export KEEL_TOOLS_BIN="$venv/bin"
  export PATH="$KEEL_TOOLS_BIN:$PATH"
}

# Headless Chromium (Debian's package) and the npm packages of the browser
# tests (api/tests/browser: playwright-core, which drives that Chromium).
ensure_browser_tools() {
  [[ -x /usr/bin/chromium ]] || apt_install chromium
  command -v npm >/dev/null || apt_install nodejs npm
  local dir="$KEEL_ROOT/api/tests/browser"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.keel-installed"; then
    say "installing the browser tests' npm packages"
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
    cp "$dir/package-lock.json" "$dir/node_modules/.keel-installed"
  fi
}

# The OAuth sign-in tests' OpenID provider: npm `oidc-provider` under node
# (api/tests/oidc/provider.mjs, started by api/tests/api/oauth.rs).
ensure_oidc_test_provider() {
  command -v npm >/dev/null || apt_install nodejs npm
  local dir="$KEEL_ROOT/api/tests/oidc"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.keel-installed"; then
    say "installing the OAuth tests' OpenID provider (npm oidc-provider)"
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
    cp "$dir/package-lock.json" "$dir/node_modules/.keel-installed"
  fi
}
