#!/bin/sh
# First start on an empty volume: initdb (superuser $POSTGRES_USER, password $POSTGRES_PASSWORD),
# password (scram-sha-256) logins from the compose network, database $POSTGRES_DB. Then the
# server in the foreground as PID 1. Later starts find the cluster and only start it.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=fusion}"
: "${POSTGRES_DB:=fusion}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "fusion-postgres: POSTGRES_PASSWORD is empty; set FUSION_PG_PASSWORD in .env" >&2
        exit 2
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # local (Unix socket, inside this container only): trust; TCP: a password, always
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    printf '%s\n' "host all all 0.0.0.0/0 scram-sha-256" "host all all ::/0 scram-sha-256" \
        >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        createdb -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "fusion-postgres: cluster made in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
