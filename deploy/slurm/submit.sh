#!/usr/bin/env bash
# Submit one study's Slurm jobs: the PgBouncer pooler, the worker array once the pooler has
# started (--dependency=after:), and a small job that stops the pooler once every worker has
# ended. Credentials come from the environment (sbatch passes it on: --export=ALL), e.g.:
#   set -a; . ~/.focaltune-pg; set +a     # PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
#   STUDY=nsmc4-demo deploy/slurm/submit.sh [more sbatch options for the workers]
set -euo pipefail
: "${STUDY:?set STUDY}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The pooler's address, on a filesystem every node sees (the home folder, by default).
export POOLER_FILE="${POOLER_FILE:-$HOME/.focaltune/pooler-$STUDY}"
mkdir -p -m 700 "$(dirname "$POOLER_FILE")"
rm -f "$POOLER_FILE"            # an earlier run's address would send the workers nowhere
pooler="$(sbatch --parsable --export=ALL "$here/pooler.sbatch")"
pooler="${pooler%%;*}"          # --parsable prints "jobid[;cluster]"
workers="$(sbatch --parsable --export=ALL --dependency="after:$pooler" "$@" \
    "$here/workers.sbatch")"
workers="${workers%%;*}"
sbatch --parsable --job-name=focaltune-pooler-stop --time=5 --ntasks=1 \
    --dependency="afterany:$workers" --wrap="scancel $pooler" >/dev/null
echo "pooler job $pooler, worker array $workers (address in $POOLER_FILE)"
