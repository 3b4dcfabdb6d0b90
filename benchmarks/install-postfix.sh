#!/usr/bin/env bash
# Install Debian's postfix (and its smtp-source / smtp-sink tools) for the benchmark peer,
# WITHOUT starting the system-wide instance. The harness runs its own private instance
# (postfix -c DIR start) on a loopback port; see benchmarks/README.md.
#
# Needs root (apt-get). Idempotent: does nothing when postfix is already installed.
set -euo pipefail

if command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ]; then
    echo "postfix already installed: $(/usr/sbin/postconf -d mail_version 2>/dev/null || true)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-postfix.sh: must run as root (apt-get install)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Satellite system: no local delivery, no question asked during the install.
debconf-set-selections <<'SEL'
postfix postfix/main_mailer_type select Satellite system
postfix postfix/mailname string bench.local
postfix postfix/relayhost string [127.0.0.1]:2525
postfix postfix/destinations string
postfix postfix/mynetworks string 127.0.0.0/8
SEL

# Keep the package's maintainer scripts from starting the system instance.
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then
    had_policy=1
    cp -p "$policy" "$policy.bench-saved"
fi
restore_policy() {
    if [ "$had_policy" -eq 1 ]; then
        mv -f "$policy.bench-saved" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"

apt-get update -qq
apt-get install -y -qq --no-install-recommends postfix >/dev/null

# Belt and braces: if something started the system instance anyway, stop it.
if [ -e /var/spool/postfix/pid/master.pid ]; then
    /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi

echo "installed: $(/usr/sbin/postconf -d mail_version)"
command -v smtp-source smtp-sink >/dev/null 2>&1 || ls /usr/sbin/smtp-source /usr/sbin/smtp-sink
