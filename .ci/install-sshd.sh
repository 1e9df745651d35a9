#!/usr/bin/env bash
# The RunPod tests run a REAL OpenSSH server (one per fake pod, on 127.0.0.1, private config)
# and generate keys with ssh-keygen. Install them from Debian / Ubuntu packages when missing.
set -euo pipefail

if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then
    echo "openssh-server present: $(/usr/sbin/sshd -V 2>&1 | head -1)"
else
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "install-sshd: not root and no sudo; install openssh-server yourself" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
    echo "installed: $(/usr/sbin/sshd -V 2>&1 | head -1)"
fi

# sshd started as root needs its privilege-separation directory (systemd creates it for the
# system service, which the tests do not use).
if [ "$(id -u)" = 0 ]; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
elif command -v sudo >/dev/null 2>&1; then
    sudo mkdir -p /run/sshd && sudo chmod 0755 /run/sshd
fi
