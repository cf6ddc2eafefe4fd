#!/bin/bash
# Start munged, (MariaDB + slurmdbd when WITH_DBD=1), slurmctld and slurmd as plain background daemons.
# Idempotent: a daemon whose pid file points at a live process is left alone.
set -euo pipefail
WITH_DBD=${WITH_DBD:-1}
wait_for() { # $1 = what, rest = command; polls for up to 30 s
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "slurm-up: timed out waiting for $what" >&2; return 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
[ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
install -d -o munge -g munge -m 0755 /run/munge          # /run is a tmpfs: recreate on every start
alive /run/munge/munged.pid || setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged
wait_for munged bash -c 'munge -n | unmunge'
if [ "$WITH_DBD" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  alive /run/mysqld/mysqld.pid || { nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
        --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 & }
  wait_for mariadb mariadb-admin ping
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  alive /run/slurmdbd.pid || slurmdbd
  wait_for slurmdbd bash -c 'echo > /dev/tcp/127.0.0.1/6819'
fi
alive /run/slurmctld.pid || slurmctld
alive /run/slurmd.pid || slurmd
wait_for "node up" bash -c 'sinfo -h -o %T | grep -qxE "idle|mixed|allocated|completing"'
sinfo
