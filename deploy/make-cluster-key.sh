#!/usr/bin/env bash
# Prints a new cluster key (libp2p swarm.key format) for `ferry node --psk-file`.
# Every node of a site needs the same key; keep it secret (chmod 600).
#   deploy/make-cluster-key.sh > /etc/ferry/swarm.key && chmod 600 /etc/ferry/swarm.key
set -euo pipefail
printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
