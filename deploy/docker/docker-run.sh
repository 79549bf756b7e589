#!/bin/sh
# Viking's agent on a plain Docker host: one privileged container, as the DaemonSet runs it
# (docs/operations.md). The image comes from `cargo xtask image` (nothing is pulled).
#
#   VIKING_STORE=etcds://10.0.0.1:2379,.. HOST_IP=10.0.0.5 sh deploy/docker/docker-run.sh
#
# Without VIKING_STORE the agent keeps its state in an embedded store under
# /var/lib/viking (a single host). Without /etc/viking/api/tls.crt the API listens on
# 127.0.0.1:7700 only; with it, on HOST_IP over TLS.
set -eu
IMAGE=${IMAGE:-viking/agent:0.1.0}
HOST_IP=${HOST_IP:-127.0.0.1}
set -- agent --node "$(hostname)" --address "$HOST_IP"
if [ -n "${VIKING_STORE:-}" ]; then
    set -- "$@" --store "$VIKING_STORE"
fi
if [ -f /etc/viking/etcd/ca.crt ]; then
    set -- "$@" --etcd-ca /etc/viking/etcd/ca.crt \
        --etcd-cert /etc/viking/etcd/tls.crt --etcd-key /etc/viking/etcd/tls.key
fi
if [ -f /etc/viking/api/tls.crt ]; then
    set -- "$@" --api "$HOST_IP:7700" --api-cert /etc/viking/api/tls.crt \
        --api-key /etc/viking/api/tls.key --api-ca /etc/viking/api/ca.crt
fi
# bpffs must be mounted (and shared, as systemd mounts it) for rshared: the pins live there.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mkdir -p /var/lib/viking /run/viking /etc/viking
exec docker run -d --name viking-agent --restart unless-stopped \
    --privileged --network host --pid host --cgroupns host \
    -v /sys/fs/cgroup:/sys/fs/cgroup \
    --mount type=bind,src=/sys/fs/bpf,dst=/sys/fs/bpf,bind-propagation=rshared \
    -v /var/run/docker.sock:/var/run/docker.sock \
    -v /var/lib/viking:/var/lib/viking \
    --mount type=bind,src=/run/viking,dst=/run/viking,bind-propagation=rshared \
    -v /etc/viking:/etc/viking:ro \
    "$IMAGE" "$@"
