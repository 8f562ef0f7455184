#!/bin/sh
# Entry point of a Redis Cluster node in docker-compose.yml: render the
# service users (render-acl) into the data volume, then run redis-server as
# a cluster node that announces its compose hostname, so the cluster
# survives containers changing IP addresses.
set -eu
: "${PAPERSTREAM_REDIS_PASSWORD_ADMIN:?must be set}"
/acl/render-acl /acl/users.acl >/data/users.acl
exec redis-server \
  --port 6379 \
  --cluster-enabled yes \
  --cluster-config-file /data/nodes.conf \
  --cluster-node-timeout 5000 \
  --cluster-announce-hostname "$(hostname)" \
  --cluster-preferred-endpoint-type hostname \
  --aclfile /data/users.acl \
  --masterauth "$PAPERSTREAM_REDIS_PASSWORD_ADMIN" \
  --appendonly yes \
  --maxmemory "${REDIS_MAXMEMORY:-512mb}" \
  --maxmemory-policy noeviction
