#!/usr/bin/env bash
# local_cluster.sh -- a real, single-node SLURM cluster on this machine.
#
# What it is for:
#   * CI: exercise peftx's SLURM path (sbatch --array sweeps, requeue,
#     signal-based preemption) against the real Slurm daemons, not a mock.
#   * Users who want to try the SLURM path on one machine before moving to a
#     real cluster.
#
# It installs Debian's slurm-wlm + munge, writes /etc/slurm/slurm.conf for a
# one-node cluster (ClusterName=peftx-local, partition "debug"), and runs
# munged, slurmctld and slurmd directly as daemons (no systemd needed, so it
# works in containers). No accounting (no slurmdbd): sacct does not work; use
# squeue / `scontrol show job` instead. Must be run as root.
#
# Usage: scripts/slurm/local_cluster.sh {install|start|stop|status}
#
# Environment overrides (all optional):
#   PEFTX_SLURM_CPUS           CPUs advertised for the node   (default: nproc)
#   PEFTX_SLURM_MEM_MB         RealMemory in MB               (default: free -m total minus max(5%, 256 MB))
#   PEFTX_SLURM_NODE           node name                      (default: hostname -s)
#   PEFTX_SLURM_KILL_WAIT      seconds between SIGTERM and SIGKILL on cancel/requeue (default: 10)
#   PEFTX_SLURM_CRED_EXPIRE    AuthInfo cred_expire; also how long a requeued job
#                              waits before it may start again (default: 10; Slurm's is 120)
#   PEFTX_SLURM_START_TIMEOUT  seconds to wait for the node to become idle (default: 60)
# Setting CPUs/memory above the real values is allowed (SlurmdParameters=
# config_overrides), e.g. to simulate a bigger node.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurm-peftx          # ctld/ and d/ below
LOG_DIR=/var/log/slurm-peftx
RUN_DIR=/run/slurm-peftx
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid

NODE=${PEFTX_SLURM_NODE:-$(hostname -s)}
KILL_WAIT=${PEFTX_SLURM_KILL_WAIT:-10}
CRED_EXPIRE=${PEFTX_SLURM_CRED_EXPIRE:-10}
START_TIMEOUT=${PEFTX_SLURM_START_TIMEOUT:-60}

log() { echo "[local_cluster] $*" >&2; }
die() { echo "[local_cluster] ERROR: $*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# pid_alive PIDFILE -> 0 if the pid in PIDFILE is a live process
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pidfile() {
  local name=$1 pidfile=$2 pid i
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(<"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not exit, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

cmd_install() {
  need_root
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
     command -v sbatch >/dev/null && command -v munged >/dev/null; then
    log "slurm-wlm and munge already installed"
    return 0
  fi
  log "installing slurm-wlm munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  log "installed: $(slurmctld -V)"
}

start_munge() {
  if [[ ! -s $MUNGE_KEY ]]; then
    log "creating munge key $MUNGE_KEY"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  # munged refuses to start unless the key and its dirs are owned by the
  # user it runs as; Debian's package owns them by "munge".
  chown munge:munge "$MUNGE_KEY"; chmod 0400 "$MUNGE_KEY"
  install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
  install -d -o munge -g munge -m 0700 /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge

  if pid_alive "$MUNGE_PID" && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
    return 0
  fi
  rm -f "$MUNGE_PID" "$MUNGE_RUN"/munge.socket.2*   # stale leftovers
  # Started by root, dropping to the "munge" user like the systemd unit does
  # (munged as uid 0 rejects the package's munge-owned key/log dirs).
  runuser -u munge -- munged
  local i
  for ((i = 0; i < 25; i++)); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && { log "munged up"; return 0; }
    sleep 0.2
  done
  die "munged did not come up; see /var/log/munge/munged.log"
}

# render_conf: print the slurm.conf for this machine on stdout.
render_conf() {
  local cpus mem total
  cpus=${PEFTX_SLURM_CPUS:-$(nproc)}
  total=$(free -m | awk '/^Mem:/ {print $2}')
  # Leave ~5% (at least 256 MB) for the OS and the daemons.
  mem=${PEFTX_SLURM_MEM_MB:-$(( total - (total / 20 > 256 ? total / 20 : 256) ))}
  (( mem > 0 )) || die "computed RealMemory=$mem MB; set PEFTX_SLURM_MEM_MB"
  # Without a default, a job that does not pass --mem is given the whole
  # node's memory, so array tasks would run one at a time.
  local def_mem=$(( mem / cpus ))
  cat <<EOF
# Generated by scripts/slurm/local_cluster.sh -- single-node peftx test cluster.
# Regenerated on every 'start'; edit the script, not this file.
ClusterName=peftx-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays the restart of a requeued job (Slurm default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule every few seconds (defaults 60/30 s) so requeued jobs restart fast.
SchedulerParameters=sched_interval=2,bf_interval=5
# Trust the CPUs/RealMemory below even if they differ from the hardware.
SlurmdParameters=config_overrides

JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

ReturnToService=2
JobRequeue=1
KillWait=$KILL_WAIT
# Keep finished jobs visible to 'scontrol show job' for 10 min (no sacct here).
MinJobAge=600

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$def_mem
EOF
}

# conf_is_current: 0 if $CONF already equals what render_conf prints.
conf_is_current() { cmp -s <(render_conf) "$CONF"; }

write_conf() {
  install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" \
    "$STATE_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d"
  if ! conf_is_current; then
    render_conf >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    log "wrote $CONF: $(grep '^NodeName=' "$CONF")"
  fi
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1; }

cmd_start() {
  need_root
  command -v slurmctld >/dev/null || die "slurm not installed; run: $0 install"
  local t0=$SECONDS
  start_munge

  if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID" && scontrol ping >/dev/null 2>&1; then
    log "slurmctld and slurmd already running"
    conf_is_current ||
      log "WARNING: settings changed since the daemons started; run '$0 stop' then '$0 start' to apply them"
  else
    write_conf
    # Restart whatever half is left so both read the same config.
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
    # -i: ignore unreadable/stale state files instead of refusing to start.
    slurmctld -i || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    slurmd -N "$NODE" || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
  fi

  local state="" resumed=0
  while (( SECONDS - t0 < START_TIMEOUT )); do
    state=$(node_state)
    case $state in
      idle|mix|alloc|comp) log "node $NODE is $state ($((SECONDS - t0))s)"; sinfo; return 0 ;;
      drain*|down*|drng*|inval*|fail*)
        # e.g. a node left DOWN/DRAINED in the saved state of an earlier run
        if (( !resumed )) && pid_alive "$SLURMD_PID"; then
          log "node is '$state', resuming it"
          scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    pid_alive "$CTLD_PID" || die "slurmctld exited; see $LOG_DIR/slurmctld.log"
    pid_alive "$SLURMD_PID" || die "slurmd exited; see $LOG_DIR/slurmd.log"
    sleep 1
  done
  die "node $NODE not idle after ${START_TIMEOUT}s (state='${state:-none}'); see $LOG_DIR/*.log and 'scontrol show node $NODE'"
}

cmd_stop() {
  need_root
  if pid_alive "$CTLD_PID"; then
    # Don't leave orphaned job steps behind: cancel everything first.
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
      log "cancelling remaining jobs"
      squeue -h -o %i | xargs -r scancel 2>/dev/null || true
      local i
      for ((i = 0; i < 30; i++)); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
  fi
  stop_pidfile slurmd "$SLURMD_PID"
  stop_pidfile slurmctld "$CTLD_PID"
  stop_pidfile munged "$MUNGE_PID"
  log "stopped"
}

cmd_status() {
  local rc=0 name pidfile
  for name in munged slurmctld slurmd; do
    case $name in
      munged) pidfile=$MUNGE_PID ;; slurmctld) pidfile=$CTLD_PID ;; slurmd) pidfile=$SLURMD_PID ;;
    esac
    if pid_alive "$pidfile"; then
      echo "$name: running (pid $(<"$pidfile"))"
    else
      echo "$name: stopped"; rc=1
    fi
  done
  if (( rc == 0 )); then sinfo; squeue; fi
  return "$rc"
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
