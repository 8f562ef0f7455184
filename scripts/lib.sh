# shellcheck shell=bash
# Shared helpers for scripts/* and .ci/run. Sourced, never executed.
# Messages go to stderr so that stdout stays clean for machine-readable
# output (e.g. `scripts/infra env`, which callers eval).

# Absolute path of the repository root (the parent of scripts/). Resolved from
# this file's location so callers may run from any working directory.
repo_root() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
}

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
warn() { log "warning: $*"; }
die() {
  log "error: $*"
  exit 1
}
# A visible banner for long-running phases, so CI logs show what failed.
step() { printf '\n==> %s\n' "$*" >&2; }

is_root() { [[ $EUID -eq 0 ]]; }

# Install Debian packages with apt-get. Only root can do that; anyone else gets
# the exact command to run instead of a half-working environment.
_APT_UPDATED=""
apt_install() {
  if ! is_root; then
    die "missing Debian packages: $*. Install them with:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends $*"
  fi
  log "installing missing Debian packages: $*"
  # The package lists on a fresh machine are empty or stale: refresh them, but
  # only once per run.
  if [[ -z $_APT_UPDATED ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}
