#!/usr/bin/env bash
# Applies every migration in sql/ in file-name order. Each file is idempotent, so running this
# again is harmless. Connection: PG_URL if set, else libpq's PGHOST/PGPORT/PGDATABASE/PGUSER/PGPASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql_cmd=(psql -X -q -v ON_ERROR_STOP=1)
if [[ -n "${PG_URL:-}" ]]; then psql_cmd+=("$PG_URL"); fi
for f in sql/[0-9]*.sql; do
  "${psql_cmd[@]}" -f "$f" >/dev/null || { echo "migrate: $f failed" >&2; exit 1; }
done
echo "migrate: applied $(ls sql/[0-9]*.sql | wc -l) migrations"
