#!/usr/bin/env bash
# Bring up / stop / check a REAL single-node SLURM 22.05 cluster (Debian 12 packages) on this
# machine, for mi_pipeline's integration tests and CI.
#
#   tests/slurm/cluster.sh start    install if needed, configure, start all daemons, smoke-test
#   tests/slurm/cluster.sh stop     stop the daemons this script starts (jobs are not drained)
#   tests/slurm/cluster.sh status   exit 0 only when the cluster accepts jobs
#
# Needs root and no init system (daemons are started directly, not via systemd).
# Start order: munged -> MariaDB -> slurmdbd -> (sacctmgr add cluster) -> slurmctld -> slurmd.
# `start` is idempotent: running daemons are left alone; a healthy cluster whose generated
# configuration is unchanged is a no-op. If the generated slurm.conf / slurmdbd.conf differ from
# the installed ones, the SLURM daemons are restarted so the new configuration takes effect.
#
# Settings (environment):
#   MI_SLURM_CLUSTER_NAME   ClusterName (default: micluster)
#   MI_SLURM_PARTITION      default partition name (default: debug)
#   MI_SLURM_NO_INSTALL=1   fail instead of installing missing packages
#   MI_SLURM_CRED_EXPIRE    AuthInfo cred_expire in s (default 10, SLURM minimum 5); see below
#   MI_SLURM_TIMEOUT        seconds to wait for each daemon / the smoke job (default 60)
#
# Choices made for fast, container-friendly tests (documented here, asserted nowhere else):
#   * No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none (works under gVisor).
#   * JobRequeue=1: batch jobs are requeueable by default (submitit requeues itself on USR2).
#   * AuthInfo=cred_expire=10: SLURM holds a requeued job for cred_expire+1 seconds (reason
#     BeginTime) before it may start again -- 120 s by default. 10 s keeps requeue tests short;
#     tests wait it out: releasing it early (scontrol update StartTime=now) makes the launch fail
#     with "Job credential revoked" while the killed run's credential is still revoked.
#     The same value is the job-step credential lifetime; 10 s is ample on one local node.
#   * KillWait=5 (SIGTERM -> SIGKILL on cancel/time limit, default 30) so cancels finish quickly.
#   * MinJobAge=600: finished jobs stay visible to squeue/scontrol for 10 min (sacct has them forever).
#   * SchedulerParameters=sched_interval=5,bf_interval=5: pending jobs (e.g. with satisfied
#     dependencies) are reconsidered every 5 s instead of 60/30 s when no event triggers scheduling.
#   * OverSubscribe=YES, MaxTime=INFINITE on the single default partition; CR_Core (memory is not
#     a consumable resource, so --mem requests do not block concurrent jobs).
#   * Addresses are pinned to 127.0.0.1 so the node works whatever the hostname resolves to.
set -euo pipefail

readonly CLUSTER_NAME="${MI_SLURM_CLUSTER_NAME:-micluster}"
readonly PARTITION="${MI_SLURM_PARTITION:-debug}"
readonly CRED_EXPIRE="${MI_SLURM_CRED_EXPIRE:-10}"
readonly TIMEOUT="${MI_SLURM_TIMEOUT:-60}"

readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
readonly CONF_DIR=/etc/slurm
readonly SLURM_CONF="$CONF_DIR/slurm.conf"
readonly DBD_CONF="$CONF_DIR/slurmdbd.conf"
readonly MYSQL_CNF=/etc/mysql/mariadb.conf.d/99-mi-slurmdbd.cnf
readonly LOG_DIR=/var/log/slurm
readonly CTLD_SPOOL=/var/spool/slurmctld
readonly SLURMD_SPOOL=/var/spool/slurmd
readonly CTLD_PID=/run/slurmctld.pid
readonly SLURMD_PID=/run/slurmd.pid
readonly DBD_PID=/run/slurmdbd.pid
readonly MUNGE_PID=/run/munge/munged.pid
readonly MYSQL_PID=/run/mysqld/mysqld.pid
readonly MYSQL_LOG=/var/log/slurm/mariadb.log
readonly MUNGE_LOG=/var/log/munge/munged.log
readonly DB_NAME=slurm_acct_db
readonly DB_USER=slurm

export SLURM_CONF

T0=$SECONDS

log() { printf '[cluster.sh %(%H:%M:%S)T +%3ss] %s\n' -1 "$((SECONDS - T0))" "$*" >&2; }

# fail DAEMON LOGFILE MESSAGE...: say which daemon failed, show the tail of its log, exit 1.
fail() {
    local daemon=$1 logfile=$2
    shift 2
    log "FAILED: $daemon: $*"
    if [[ -n "$logfile" && -r "$logfile" ]]; then
        printf -- '----- last 40 lines of %s -----\n' "$logfile" >&2
        tail -n 40 "$logfile" >&2 || true
        printf -- '----- end of %s -----\n' "$logfile" >&2
    else
        log "(no log file ${logfile:-given} to show)"
    fi
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 0.5
    done
}

# pid_alive PIDFILE: the process named in PIDFILE exists.
pid_alive() {
    local pidfile=$1 pid
    [[ -r "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null
}

# stop_pidfile NAME PIDFILE: SIGTERM the daemon named in PIDFILE and wait (SIGKILL after 20 s).
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    if ! pid_alive "$pidfile"; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still alive after 20 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

need_root() {
    if ((EUID != 0)); then
        log "must run as root (starts system daemons, writes /etc/slurm)"
        exit 1
    fi
}

# ---------------------------------------------------------------- packages
install_packages() {
    local missing=() bin
    for bin in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mysqld_safe mysqladmin; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: already installed ($(dpkg-query -W -f='slurmctld ${Version}' slurmctld 2>/dev/null || echo '?'))"
        return 0
    fi
    if [[ "${MI_SLURM_NO_INSTALL:-0}" == 1 ]]; then
        log "packages: missing ${missing[*]} and MI_SLURM_NO_INSTALL=1"
        exit 1
    fi
    local t=$SECONDS
    log "packages: missing ${missing[*]}; apt-get update + install ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || fail apt "" "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2 \
        || fail apt "" "apt-get install ${PACKAGES[*]} failed"
    log "packages: installed in $((SECONDS - t))s"
}

# ---------------------------------------------------------------- configuration
# Reuse the database password from an existing slurmdbd.conf, so a re-run changes nothing.
db_password() {
    local pw=""
    if [[ -r "$DBD_CONF" ]]; then
        pw=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" | head -n 1)
    fi
    if [[ -z "$pw" ]]; then
        pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    fi
    printf '%s' "$pw"
}

render_slurm_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(free -m | awk '/^Mem:/ {print $2}')
    cat <<EOF
# Generated by mi_pipeline tests/slurm/cluster.sh -- do not edit; re-run 'cluster.sh start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=120
SlurmdTimeout=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
EOF
}

render_dbd_conf() {
    local pw=$1
    cat <<EOF
# Generated by mi_pipeline tests/slurm/cluster.sh -- do not edit; re-run 'cluster.sh start'.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$pw
EOF
}

render_mysql_cnf() {
    cat <<'EOF'
# Generated by mi_pipeline tests/slurm/cluster.sh: settings slurmdbd recommends.
[mysqld]
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
bind-address=127.0.0.1
EOF
}

# install_file MODE SRC DEST: replace DEST by SRC if different; returns 0 if DEST changed.
install_file() {
    local mode=$1 src=$2 dest=$3
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        rm -f "$src"
        return 1
    fi
    install -m "$mode" -o root -g root "$src" "$dest"
    rm -f "$src"
    log "config: wrote $dest (mode $mode)"
    return 0
}

CONFIG_CHANGED=0
write_configs() {
    local tmp
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL" "$(dirname "$MYSQL_CNF")"
    tmp=$(mktemp)
    render_slurm_conf >"$tmp"
    if install_file 644 "$tmp" "$SLURM_CONF"; then CONFIG_CHANGED=1; fi
    tmp=$(mktemp)
    render_dbd_conf "$(db_password)" >"$tmp"
    if install_file 600 "$tmp" "$DBD_CONF"; then CONFIG_CHANGED=1; fi
    tmp=$(mktemp)
    render_mysql_cnf >"$tmp"
    install_file 644 "$tmp" "$MYSQL_CNF" || true
    if ((CONFIG_CHANGED == 0)); then
        log "config: $SLURM_CONF and $DBD_CONF unchanged"
    fi
}

# ---------------------------------------------------------------- daemons
start_munge() {
    if pid_alive "$MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        log "munged: already running (pid $(<"$MUNGE_PID"))"
        return 0
    fi
    log "munged: starting as user munge"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || fail munged "" "/etc/munge/munge.key missing (reinstall munge)"
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --force >/dev/null 2>&1 \
        || fail munged "$MUNGE_LOG" "munged exited non-zero"
    wait_for "$TIMEOUT" "munge credential round trip" \
        bash -c 'munge -n </dev/null | unmunge' \
        || fail munged "$MUNGE_LOG" "munge/unmunge round trip fails"
    log "munged: up (pid $(<"$MUNGE_PID"))"
}

mysql_up() { mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; }

start_mariadb() {
    if mysql_up; then
        log "mariadb: already running"
    else
        log "mariadb: starting mysqld_safe"
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        touch "$MYSQL_LOG"
        chown mysql:mysql "$MYSQL_LOG"
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            log "mariadb: initialising data directory"
            mysql_install_db --user=mysql --datadir=/var/lib/mysql >>"$MYSQL_LOG" 2>&1 \
                || fail mariadb "$MYSQL_LOG" "mysql_install_db failed"
        fi
        setsid nohup mysqld_safe --user=mysql --pid-file="$MYSQL_PID" \
            --log-error="$MYSQL_LOG" </dev/null >/dev/null 2>&1 &
        wait_for "$TIMEOUT" "mariadb ping" mysql_up \
            || fail mariadb "$MYSQL_LOG" "mariadb does not answer mysqladmin ping"
        log "mariadb: up (pid $(cat "$MYSQL_PID" 2>/dev/null || echo '?'))"
    fi
    local pw
    pw=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" | head -n 1)
    log "mariadb: ensuring database $DB_NAME and user $DB_USER@localhost"
    mysql --protocol=socket -uroot <<EOF || fail mariadb "$MYSQL_LOG" "creating database/user failed"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_up() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if pid_alive "$DBD_PID" && dbd_up; then
        log "slurmdbd: already running (pid $(<"$DBD_PID"))"
        return 0
    fi
    stop_pidfile slurmdbd "$DBD_PID"
    log "slurmdbd: starting"
    /usr/sbin/slurmdbd || fail slurmdbd "$LOG_DIR/slurmdbd.log" "slurmdbd exited non-zero"
    wait_for "$TIMEOUT" "slurmdbd answering sacctmgr" dbd_up \
        || fail slurmdbd "$LOG_DIR/slurmdbd.log" "sacctmgr cannot reach slurmdbd"
    log "slurmdbd: up (pid $(<"$DBD_PID"))"
}

add_cluster() {
    if sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        log "sacctmgr: cluster $CLUSTER_NAME already registered"
        return 0
    fi
    log "sacctmgr: adding cluster $CLUSTER_NAME"
    sacctmgr -i add cluster "$CLUSTER_NAME" >&2 \
        || fail slurmdbd "$LOG_DIR/slurmdbd.log" "sacctmgr add cluster $CLUSTER_NAME failed"
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    if pid_alive "$CTLD_PID" && ctld_up; then
        log "slurmctld: already running (pid $(<"$CTLD_PID"))"
        return 0
    fi
    stop_pidfile slurmctld "$CTLD_PID"
    log "slurmctld: starting"
    /usr/sbin/slurmctld || fail slurmctld "$LOG_DIR/slurmctld.log" "slurmctld exited non-zero"
    wait_for "$TIMEOUT" "scontrol ping" ctld_up \
        || fail slurmctld "$LOG_DIR/slurmctld.log" "slurmctld does not answer scontrol ping"
    log "slurmctld: up (pid $(<"$CTLD_PID"))"
}

node_state() { sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n 1; }

node_ready() {
    # idle, mixed, allocated or completing; a non-responding node shows a trailing "*" and is not ready.
    [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]
}

start_slurmd() {
    local host
    host=$(hostname -s)
    if pid_alive "$SLURMD_PID"; then
        log "slurmd: already running (pid $(<"$SLURMD_PID"))"
    else
        log "slurmd: starting"
        /usr/sbin/slurmd || fail slurmd "$LOG_DIR/slurmd.log" "slurmd exited non-zero"
    fi
    local deadline=$((SECONDS + TIMEOUT)) state
    while :; do
        state=$(node_state)
        if node_ready; then break; fi
        case "$state" in
            down* | drain* | fail*)
                log "slurmd: node $host is '$state'; resuming it"
                scontrol update NodeName="$host" State=RESUME >&2 || true
                ;;
        esac
        if ((SECONDS >= deadline)); then
            sinfo -N -l >&2 || true
            fail slurmd "$LOG_DIR/slurmd.log" "node $host is '${state:-unknown}', not idle, after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "slurmd: up (pid $(<"$SLURMD_PID")), node $host is $(node_state)"
}

# Submit a trivial batch job and wait until sacct reports it COMPLETED.
smoke_test() {
    local t=$SECONDS jid state="" deadline
    log "smoke: sbatch --wrap true"
    jid=$(sbatch --parsable --job-name=mi-cluster-smoke --output=/dev/null --time=1 \
        --wrap 'true') || fail slurmctld "$LOG_DIR/slurmctld.log" "sbatch of the smoke job failed"
    jid=${jid%%;*}
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        state=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null | head -n 1)
        case "$state" in
            COMPLETED) break ;;
            FAILED* | CANCELLED* | TIMEOUT* | NODE_FAIL* | OUT_OF_ME* | BOOT_FAIL* | DEADLINE*)
                scontrol show job "$jid" >&2 || true
                fail slurmd "$LOG_DIR/slurmd.log" "smoke job $jid ended $state"
                ;;
        esac
        if ((SECONDS >= deadline)); then
            scontrol show job "$jid" >&2 || true
            fail slurmctld "$LOG_DIR/slurmctld.log" \
                "smoke job $jid not COMPLETED in sacct after ${TIMEOUT}s (sacct state: '${state:-none}')"
        fi
        sleep 0.5
    done
    log "smoke: job $jid COMPLETED in sacct after $((SECONDS - t))s"
}

# ---------------------------------------------------------------- commands
# Quick health check without side effects: daemons alive, controller and dbd answer,
# node usable, and the controller would accept a job (sbatch --test-only).
check_status() {
    local quiet=${1:-0} problems=()
    command -v sbatch >/dev/null 2>&1 || { problems+=("slurm not installed"); }
    if ((${#problems[@]} == 0)); then
        pid_alive "$MUNGE_PID" || problems+=("munged not running")
        mysql_up || problems+=("mariadb not answering")
        pid_alive "$DBD_PID" || problems+=("slurmdbd not running")
        pid_alive "$CTLD_PID" || problems+=("slurmctld not running")
        pid_alive "$SLURMD_PID" || problems+=("slurmd not running")
    fi
    if ((${#problems[@]} == 0)); then
        ctld_up || problems+=("slurmctld does not answer scontrol ping")
        dbd_up || problems+=("slurmdbd does not answer sacctmgr")
        node_ready || problems+=("node $(hostname -s) is '$(node_state)'")
    fi
    if ((${#problems[@]} == 0)); then
        sbatch --test-only --time=1 --output=/dev/null --wrap true >/dev/null 2>&1 \
            || problems+=("sbatch --test-only rejects a trivial job")
    fi
    if ((${#problems[@]} > 0)); then
        if ((quiet == 0)); then
            local p
            for p in "${problems[@]}"; do log "status: $p"; done
            log "status: NOT accepting jobs"
        fi
        return 1
    fi
    if ((quiet == 0)); then
        log "status: cluster $CLUSTER_NAME accepting jobs; node $(hostname -s) $(node_state)"
    fi
    return 0
}

cmd_start() {
    need_root
    log "start: single-node SLURM cluster '$CLUSTER_NAME' on $(hostname -s)"
    install_packages
    write_configs
    if ((CONFIG_CHANGED == 0)) && check_status 1; then
        log "start: cluster already running and accepting jobs; nothing to do ($((SECONDS - T0))s)"
        return 0
    fi
    if ((CONFIG_CHANGED == 1)); then
        # Running SLURM daemons read their config only at start: restart them.
        stop_pidfile slurmd "$SLURMD_PID"
        stop_pidfile slurmctld "$CTLD_PID"
        stop_pidfile slurmdbd "$DBD_PID"
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    add_cluster
    start_slurmctld
    start_slurmd
    smoke_test
    log "start: cluster '$CLUSTER_NAME' up and accepting jobs; bring-up took $((SECONDS - T0))s"
}

cmd_stop() {
    need_root
    log "stop: stopping SLURM daemons"
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
    stop_pidfile slurmdbd "$DBD_PID"
    if mysql_up; then
        log "mariadb: shutting down"
        mysqladmin --protocol=socket -uroot shutdown || log "mariadb: shutdown command failed"
    else
        log "mariadb: not running"
    fi
    stop_pidfile munged "$MUNGE_PID"
    log "stop: done ($((SECONDS - T0))s)"
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) check_status 0 ;;
        *)
            echo "usage: $0 start|stop|status" >&2
            exit 2
            ;;
    esac
}

main "$@"
