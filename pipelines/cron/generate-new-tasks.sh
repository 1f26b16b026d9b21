#!/usr/bin/env bash
# Generate weights for newly listed tasks on a schedule. Idempotent and safe to overlap:
# - one output, OUTDIR/tasks.zarr, holding the tasks of the list; when the list changes, only the
#   tasks the output lacks are generated (`lohp generate --update`), the others are kept byte for
#   byte (a changed policy or setting makes every task again);
# - a task list that has not changed since the last run is skipped (its digest is kept in
#   OUTDIR/.tasks.digest);
# - `flock -n` skips a run while the previous one still holds OUTDIR/.cron.lock;
# - `lohp generate` writes into a temporary directory and renames it into place (its own lock
#   file beside the output is removed when it is done).
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
out="$OUTDIR/tasks.zarr"
digest=$(sha256sum "$TASKS" | cut -c1-16)
if [ -d "$out" ] && [ "$(cat "$OUTDIR/.tasks.digest" 2>/dev/null || true)" = "$digest" ]; then
  echo "$(date -Is) $out is up to date"
  exit 0
fi
"$LOHP" -q generate --policy "$POLICY" --tasks "@$TASKS" --samples "${SAMPLES:-4}" --out "$out" \
  --update
echo "$digest" >"$OUTDIR/.tasks.digest"
ln -sfn "$(basename "$out")" "$OUTDIR/latest.zarr"  # the name earlier versions wrote
echo "$(date -Is) wrote $out"
