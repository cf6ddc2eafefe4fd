#!/bin/bash
# Install, configure and start a single-node SLURM (slurmctld + slurmd + slurmdbd/MariaDB for sacct)
# on a Debian machine without systemd — used by CI and for local development.
# env: WITH_DBD=1 (0 = no accounting; then sacct and pickle-less failure detection do not work),
#      SLURM_CPUS=8 (advertised CPUs; more than nproc is fine, jobs share the real cores)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive WITH_DBD=${WITH_DBD:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
# Package postinst scripts must not start services themselves (no systemd here).
[ -x /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! command -v slurmctld >/dev/null || { [ "$WITH_DBD" = 1 ] && ! command -v slurmdbd >/dev/null; }; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
fi
"$HERE/write_conf.sh"
"$HERE/slurm-up.sh"
