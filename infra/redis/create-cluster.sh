#!/bin/sh
# One-shot job of docker-compose.yml: join the six nodes given as arguments
# into a cluster of 3 masters and 3 replicas, unless they already form one.
# Nodes meet by IP address (what `redis-cli --cluster create` needs); they
# announce their hostnames to clients (see node.sh).
set -eu
: "${PAPERSTREAM_REDIS_PASSWORD_ADMIN:?must be set}"
export REDISCLI_AUTH="$PAPERSTREAM_REDIS_PASSWORD_ADMIN"
for node in "$@"; do
  until redis-cli --no-auth-warning -h "$node" PING >/dev/null 2>&1; do sleep 1; done
done
known=$(redis-cli --no-auth-warning -h "$1" CLUSTER INFO | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
if [ "${known:-1}" -gt 1 ]; then
  echo "the cluster exists ($known nodes)"
  exit 0
fi
addresses=''
for node in "$@"; do
  addresses="$addresses $(getent hosts "$node" | awk '{print $1}'):6379"
done
# shellcheck disable=SC2086 # one word per address
redis-cli --no-auth-warning --cluster create $addresses --cluster-replicas 1 --cluster-yes
until redis-cli --no-auth-warning -h "$1" CLUSTER INFO | grep -q 'cluster_state:ok'; do sleep 1; done
echo "the cluster is ready"
