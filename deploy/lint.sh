#!/usr/bin/env bash
# Lints every deploy file on a machine with no Docker engine and no cluster:
# the Dockerfile, the Compose file, the Kubernetes manifests (rendered by
# kustomize, validated against the API schemas bundled with
# kubernetes-validate, so offline), the systemd units and the Grafana
# dashboard. Installs what is missing; prints one line per check and stops
# at the first failure with the tool's own output.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/local/services.sh"
cd "$KEEL_ROOT"

# Kubernetes versions the manifests must be valid for: an older one still
# common on managed clusters, and the newest kubernetes-validate bundles.
KUBE_VERSIONS=(1.30.0 1.37.0)
# Highest `systemd-analyze security` exposure a unit may have (0-100 scale,
# shown as 0.0-10.0): keeps a later edit from quietly dropping the hardening.
SYSTEMD_EXPOSURE_MAX=20
# Kubernetes and Compose files conventionally start without `---`; 120
# columns fit the longer comments and probe commands.
YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 120}, document-start: disable}}'

command -v docker-compose >/dev/null || apt_install docker-compose
command -v systemd-analyze >/dev/null || apt_install systemd
if ! command -v kubectl >/dev/null; then
  # Not in Debian itself; present when the Kubernetes (or Google Cloud) apt source is.
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [^(]'; then
    apt_install kubectl
  else
    die "kubectl is missing and no apt source offers it; see https://kubernetes.io/docs/tasks/tools/"
  fi
fi
ensure_python_tools

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs a check quietly: one line when it passes; its output and exit 1 when not.
check() {
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then
    printf 'ok    %s\n' "$name"
  else
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$work/out"
    exit 1
  fi
}

# Fails when a command prints anything: systemd-analyze verify reports
# unknown keys and bad values as warnings and still exits 0.
silent() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
  [[ -z $out ]] || { printf '%s\n' "$out"; return 1; }
}

# A file system root holding the units as they would be installed, the
# distribution's units they depend on (sysinit.target, network-online.target
# and so on), and executable stand-ins at the ExecStart paths, so verify
# checks every line of the real unit files without the binaries installed.
systemd_root() {
  local root=$work/systemd-root bin
  mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  cp deploy/systemd/*.service "$root/etc/systemd/system/"
  for bin in keel-api keel-worker keel-scheduler; do
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/$bin"
    chmod 755 "$root/usr/local/bin/$bin"
  done
  printf '%s' "$root"
}

# Units to check, with the template instantiated (a template alone is not a
# unit systemd can load).
units() {
  local f name
  for f in deploy/systemd/*.service; do
    name=$(basename "$f")
    [[ $name == *@.service ]] && name=${name/@.service/@1.service}
    printf '%s\n' "$name"
  done
}

# The exposure of each unit, failing above the maximum; the per-setting table
# is left out (`systemd-analyze security --offline=yes UNIT` shows it).
hardened() {
  local root=$1 out rc=0; shift
  out=$(systemd-analyze security --offline=yes --no-pager --root="$root" \
    --threshold="$SYSTEMD_EXPOSURE_MAX" "$@" 2>&1) || rc=$?
  grep 'Overall exposure' <<<"$out" || printf '%s\n' "$out"
  return "$rc"
}

kustomize_validate() {
  local dir=$1 version=$2
  kubectl kustomize "$dir" | kubernetes-validate --strict --quiet --kubernetes-version "$version" -
}

grafana_panels() {
  python3 - deploy/grafana/keel.json <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
problems, seen = [], set()
for panel in dashboard["panels"]:
    if panel["id"] in seen:
        problems.append(f"panel {panel['title']!r}: id {panel['id']} is used twice")
    seen.add(panel["id"])
    for target in panel.get("targets", []):
        if not target.get("expr"):
            problems.append(f"panel {panel['title']!r}: a query has no expr")
        if target.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {panel['title']!r}: a query's datasource is not $datasource")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

check "hadolint deploy/Dockerfile" hadolint --no-color deploy/Dockerfile
check "yamllint deploy/docker-compose.yml deploy/k8s" \
  yamllint --strict -f parsable -d "$YAMLLINT_CONFIG" deploy/docker-compose.yml deploy/k8s
check "docker-compose config deploy/docker-compose.yml" \
  docker-compose -f deploy/docker-compose.yml config -q
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  for version in "${KUBE_VERSIONS[@]}"; do
    check "kustomize $dir | kubernetes-validate $version" kustomize_validate "$dir" "$version"
  done
done
check "kubernetes-validate deploy/k8s/secret.example.yaml" \
  kubernetes-validate --strict --quiet deploy/k8s/secret.example.yaml
root=$(systemd_root)
mapfile -t unit_names < <(units)
check "systemd-analyze verify ${unit_names[*]}" \
  silent systemd-analyze verify --root="$root" --man=no "${unit_names[@]}"
check "systemd-analyze security (exposure <= $((SYSTEMD_EXPOSURE_MAX / 10)).$((SYSTEMD_EXPOSURE_MAX % 10)))" \
  hardened "$root" "${unit_names[@]}"
check "json deploy/grafana/keel.json" python3 -m json.tool deploy/grafana/keel.json
check "grafana panels: unique ids, a query each, the datasource variable" grafana_panels
