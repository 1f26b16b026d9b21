#!/usr/bin/env bash
# Generate weights for newly listed tasks on a schedule. Idempotent and safe to overlap:
# - a task list that has not changed since its last output is skipped;
# - `flock -n` skips a run while the previous one still holds the lock;
# - `lohp generate` writes into a temporary directory and renames it into place.
# Crontab line (every 15 minutes):
#   */15 * * * * /path/to/lohp/pipelines/cron/generate-new-tasks.sh /srv/lohp/tasks.txt /srv/lohp/policies/fmnist-k2 /srv/lohp/gen >>/srv/lohp/cron.log 2>&1
set -euo pipefail
TASKS=${1:?task list file (one task id per line)}
POLICY=${2:?policy directory}
OUTDIR=${3:?output directory}
# The repository's virtual environment (scripts/install.sh) when there is one, else lohp on PATH.
VENV_LOHP="$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/lohp"
if [ -z "${LOHP:-}" ]; then
  if [ -x "$VENV_LOHP" ]; then LOHP="$VENV_LOHP"; else LOHP=lohp; fi
fi
mkdir -p "$OUTDIR"
exec 9>"$OUTDIR/.cron.lock"
flock -n 9 || { echo "$(date -Is) previous run still active; skipping"; exit 0; }
digest=$(sha256sum "$TASKS" | cut -c1-16)
out="$OUTDIR/tasks-$digest.zarr"
if [ -d "$out" ]; then
  echo "$(date -Is) $out is up to date"
  exit 0
fi
"$LOHP" -q generate --policy "$POLICY" --tasks "@$TASKS" --samples "${SAMPLES:-4}" --out "$out"
ln -sfn "$(basename "$out")" "$OUTDIR/latest.zarr"
echo "$(date -Is) wrote $out"
