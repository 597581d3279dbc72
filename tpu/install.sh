#!/usr/bin/env bash
# Installs mtkd on every worker of a TPU VM / pod slice: the code (git clone,
# or a copy of this checkout), the .venv (scripts/setup.sh), jax[tpu], gcsfuse
# and the bucket mount; then checks that all workers see all TPU devices.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/install.sh --name NAME [--zone ZONE] [--bucket BUCKET] [flags]

Runs on --worker=all; safe to re-run (it updates the code and re-uses the .venv).

Flags (environment variable, default):
  --repo-url URL       TPU_REPO_URL ("")  git URL to clone on the workers. Empty: copy this
                       checkout (tracked and untracked-but-not-ignored files, plus .git, so
                       local edits travel too) with `tpu-vm scp --worker=all`; that needs
                       your key in ssh-agent: ssh-add ~/.ssh/google_compute_engine.
  --ref REF            TPU_REPO_REF ("")  Branch, tag or commit to check out (URL mode;
                       default: the remote's default branch).
  --repo-dir DIR       TPU_REPO_DIR (mtkd)  Checkout on the workers, relative to the
                       remote home unless absolute.
  --bucket BUCKET      TPU_BUCKET ("")  GCS bucket to mount with gcsfuse on every worker
                       (name or gs://name). Empty: no gcsfuse.
  --mount-root DIR     TPU_MOUNT_ROOT (/gcs)  The bucket is mounted at DIR/BUCKET.
  --gcsfuse-flags F    TPU_GCSFUSE_FLAGS ("--implicit-dirs --rename-dir-limit=1000000
                       --metadata-cache-ttl-secs=0 --metadata-cache-negative-ttl-secs=0")
                       Directory renames are needed by mtkd's cache and Orbax; no
                       metadata caching so every host sees the others' files at once.
  --python EXE         TPU_PYTHON (auto)  Python for the .venv: auto = first of
                       python3.13/3.12/3.11/python3 that is >= 3.11, else apt-get
                       install python3.11 (TPU VM images ship Python 3.10).
  --jax-spec SPEC      TPU_JAX_SPEC (same)  same = pip install "jax[tpu]==<the jax version
                       scripts/setup.sh installed>"; anything else is passed to
                       pip install -U, e.g. 'jax[tpu]' for the newest.
  --steps LIST         TPU_INSTALL_STEPS (code,setup,check)  Comma list of: code (clone or
                       copy), setup (venv, jax[tpu], gcsfuse, mount), check (all workers
                       run jax.distributed.initialize() and print their devices).
                       E.g. --steps code to push an edit.
  --worker W           TPU_WORKERS (all)  Workers for code/setup: all, 0, 1-3, 0,2.

EOF
  common_usage
}

parse_flags "${COMMON_SPECS[@]}" \
  "--repo-url:TPU_REPO_URL" "--ref:TPU_REPO_REF" "--repo-dir:TPU_REPO_DIR" \
  "--bucket:TPU_BUCKET" "--mount-root:TPU_MOUNT_ROOT" "--gcsfuse-flags:TPU_GCSFUSE_FLAGS" \
  "--python:TPU_PYTHON" "--jax-spec:TPU_JAX_SPEC" "--steps:TPU_INSTALL_STEPS" \
  "--worker:TPU_WORKERS" -- "$@"
[ ${#REST[@]} -eq 0 ] || usage_error "unexpected argument: ${REST[0]}"
common_defaults
remote_defaults
TPU_REPO_URL=${TPU_REPO_URL:-}
TPU_REPO_REF=${TPU_REPO_REF:-}
TPU_PYTHON=${TPU_PYTHON:-auto}
TPU_JAX_SPEC=${TPU_JAX_SPEC:-same}
TPU_INSTALL_STEPS=${TPU_INSTALL_STEPS:-code,setup,check}
TPU_WORKERS=${TPU_WORKERS:-all}
export TPU_PYTHON TPU_JAX_SPEC

has_step() { case ",$TPU_INSTALL_STEPS," in *",$1,"*) return 0 ;; esac; return 1; }
for s in ${TPU_INSTALL_STEPS//,/ }; do
  case "$s" in code|setup|check) ;; *) usage_error "unknown step in --steps: $s" ;; esac
done

q() { printf '%q' "$1"; }

code_from_git() {
  local dir url ref
  dir=$(q "$TPU_REPO_DIR"); url=$(q "$TPU_REPO_URL"); ref=$(q "$TPU_REPO_REF")
  log "cloning/updating $TPU_REPO_URL${TPU_REPO_REF:+ @ $TPU_REPO_REF} into ~/$TPU_REPO_DIR"
  tpu_ssh "$TPU_WORKERS" "set -e; cd \"\$HOME\"
if [ -d $dir/.git ]; then git -C $dir fetch --quiet --tags origin
else git clone --quiet $url $dir; fi
ref=$ref
if [ -z \"\$ref\" ]; then
  git -C $dir remote set-head origin --auto >/dev/null
  ref=\$(git -C $dir rev-parse --abbrev-ref origin/HEAD)
elif git -C $dir rev-parse --verify --quiet \"origin/\$ref^{commit}\" >/dev/null; then
  ref=origin/\$ref
fi
git -C $dir rev-parse --verify --quiet \"\$ref^{commit}\" >/dev/null \\
  || { echo \"no branch, tag or commit \$ref in $url\" >&2; exit 1; }
git -C $dir checkout --quiet --detach \"\$ref\"
echo \"mtkd code at \$(git -C $dir rev-parse --short HEAD) on \$(hostname)\""
}

code_from_checkout() {
  local tmp archive name
  tmp=$(mktemp -d)
  archive="$tmp/mtkd-src.tgz"
  name="mtkd-src-$$.tgz"
  log "packing $TPU_REPO_ROOT (git ls-files + untracked, not ignored, + .git)"
  (
    cd "$TPU_REPO_ROOT"
    {
      git ls-files -z --cached --others --exclude-standard
      [ -d .git ] && printf '.git\0'
    } | while IFS= read -r -d '' f; do
      [ -e "$f" ] && printf '%s\0' "$f"
    done | tar --null -T - -czf "$archive"
  )
  log "copying $(du -h "$archive" | cut -f1) to worker(s) $TPU_WORKERS"
  if [ "$TPU_DRY_RUN" != 1 ] && [ "$TPU_WORKERS" != 0 ] && command -v ssh-add >/dev/null; then
    local key=~/.ssh/google_compute_engine
    # gcloud creates the key on first use; an ssh before the scp makes sure.
    [ -f "$key" ] || tpu_ssh "$TPU_WORKERS" true
    if [ -f "$key" ] && ! ssh-add -l 2>/dev/null | grep -qF "$(ssh-keygen -lf "$key" | awk '{print $2}')"; then
      ssh-add "$key" 2>/dev/null || log "warning: could not ssh-add $key; scp to several workers" \
        "needs it in an ssh-agent: eval \"\$(ssh-agent -s)\"; ssh-add $key"
    fi
  fi
  gc compute tpus tpu-vm scp "$archive" "$TPU_NAME:$name" --zone "$TPU_ZONE" \
    ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --worker="$TPU_WORKERS" \
    ${SSH_ARGS[@]+"${SSH_ARGS[@]}"}
  rm -rf "$tmp"
  local dir
  dir=$(q "$TPU_REPO_DIR")
  tpu_ssh "$TPU_WORKERS" "set -e; cd \"\$HOME\"; mkdir -p $dir
t=\$(mktemp -d); tar -xzf $name -C \"\$t\"; rm -f $name
if command -v rsync >/dev/null; then
  rsync -a --delete --exclude=/.venv/ --exclude=/workdirs/ --exclude=/build/ \"\$t\"/ $dir/
else cp -a \"\$t\"/. $dir/; fi
rm -rf \"\$t\"
echo \"mtkd code in ~/$TPU_REPO_DIR on \$(hostname)\""
}

if has_step code; then
  # The first ssh also creates and propagates the gcloud ssh key if needed.
  if [ -n "$TPU_REPO_URL" ]; then code_from_git; else code_from_checkout; fi
fi
if has_step setup; then
  log "setup on worker(s) $TPU_WORKERS: python, .venv, jax[tpu]${TPU_BUCKET:+, gcsfuse + gs://$TPU_BUCKET at $TPU_MOUNT_ROOT/$TPU_BUCKET}"
  tpu_ssh "$TPU_WORKERS" "$(worker_cmd setup)"
fi
if has_step check; then
  # The check needs the TPU chips; it would fail (or hang) next to a run.
  if tpu_ssh all "$(status_cmd)" 2>/dev/null | grep -q ': running '; then
    log "warning: check skipped: an mtkd run is going on $TPU_NAME (tpu/stop.sh first)"
  else
    log "check: jax.distributed.initialize() on all workers"
    tpu_ssh all "$(worker_cmd check)"
  fi
fi
log "done"
