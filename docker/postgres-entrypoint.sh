#!/bin/sh
# PostgreSQL 15 from Debian's packages: on first start, a cluster with logical decoding, the
# password of POSTGRES_USER, the database POSTGRES_DB, the project's migrations (sql/, the same
# files scripts/migrate.sh applies) and the least-privileged logins (postgres-roles); then the server in the foreground, as PID 1's child of tini.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
: "${POSTGRES_USER:=postgres}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" "${POSTGRES_DB:=appdb}"
if [ ! -s "$data/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 > /dev/null
  rm -f "$pw"
  # Other containers of the Compose network connect over TCP, with the password.
  printf 'host all all all scram-sha-256\nhost replication all all scram-sha-256\n' >> "$data/pg_hba.conf"
  "$bin/pg_ctl" -D "$data" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start > /dev/null
  psql -X -q -h /tmp -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$POSTGRES_DB\"" > /dev/null
  for f in /opt/sql/[0-9]*.sql; do
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -h /tmp -U "$POSTGRES_USER" -d "$POSTGRES_DB" -v ON_ERROR_STOP=1 -f "$f" > /dev/null
  done
  postgres-roles  # the logins of Debezium and of the jobs, with only what they need
  "$bin/pg_ctl" -D "$data" -w stop > /dev/null
  echo "postgres: initialized $POSTGRES_DB with $(ls /opt/sql/[0-9]*.sql | wc -l) migrations"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp -c wal_level=logical \
  -c max_replication_slots=16 -c max_wal_senders=16 "$@"
