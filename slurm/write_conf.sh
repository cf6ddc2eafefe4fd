#!/bin/bash
# Write /etc/slurm/slurm.conf (and slurmdbd.conf) for one node that is both controller and worker.
# env: SLURM_CPUS=8, SLURM_MEM_MB (default: RAM - 2 GiB), WITH_DBD=1
# Partitions: debug (default, preemptible, 20 s grace), high (preempts debug), short (MaxTime 3 min).
set -euo pipefail
HOST=$(hostname -s)
CPUS=${SLURM_CPUS:-8}
MEM=${SLURM_MEM_MB:-$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 2048 ))}
WITH_DBD=${WITH_DBD:-1}
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# short credential lifetime: a requeued job may restart after 5 s instead of 120 s
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${ACCT}
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# accept more CPUs than the hardware has, so several 1-CPU jobs run side by side
SlurmdParameters=config_overrides
DefMemPerCPU=512
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} Sockets=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${MEM} State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=high  Nodes=${HOST} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
PartitionName=short Nodes=${HOST} MaxTime=3 State=UP PriorityTier=1
CONF
if [ "$WITH_DBD" = 1 ]; then
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
fi
