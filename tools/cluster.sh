#!/usr/bin/env bash
# A Redis Cluster on this machine's loopback, for hongbao's cluster mode
# (`hongbao server --cluster ...`), its tests and the demo. Debian's
# redis-server, installed with apt-get when missing (as root, or with
# passwordless sudo).
#
#   tools/cluster.sh up [--dir D] [--port P] [--primaries 3] [--replicas 1]
#                       [--nodes N [--node-port L] [--node-http-port H]
#                        [--hongbao PATH] [-- SERVER-ARGS...]]
#       Starts primaries x (1 + replicas) redis-server nodes on 127.0.0.1
#       ports P, P+1, ... (their cluster bus on P+10000, ...), each in
#       D/node-PORT/ (redis.conf, redis.pid, redis.log, nodes.conf, the
#       append-only files), creates the cluster with
#       `redis-cli --cluster create`, and waits until every node says
#       cluster_state:ok with all 16384 slots covered and every replica's
#       link to its primary is up. Refuses a port that is taken.
#       1 or 2 primaries (which `redis-cli --cluster create` refuses; for
#       benchmarks) are joined by hand: slots split evenly, CLUSTER MEET,
#       CLUSTER REPLICATE. A single primary cannot fail over (its replica
#       needs a majority of primaries to vote for it).
#       With --nodes N, then starts N hongbao nodes on that cluster: node i
#       (1..N) runs `hongbao server --cluster redis://127.0.0.1:P,...
#       --node-id i --listen 127.0.0.1:L+i-1 --http 127.0.0.1:H+i-1
#       --data-dir D/hongbao-i SERVER-ARGS...` (pid in D/hongbao-i.pid,
#       output in D/hongbao-i.log), and waits until each one's /status says
#       it reaches the engine. L defaults to 1025, H to 8989 (the server's
#       own defaults), PATH to target/release/hongbao, or target/debug/hongbao
#       when there is no release build.
#   tools/cluster.sh down [--dir D]
#       Stops exactly the pids in D's pidfiles, the hongbao nodes first
#       (each: TERM, then KILL after a deadline), and removes D.
#   tools/cluster.sh status [--dir D]
#       Each node: port, pid, role, its view of the cluster state; then each
#       hongbao node: id, listen and HTTP ports, pid, whether it reaches the
#       engine.
#   tools/cluster.sh kill-primary [--dir D] [--key KEY]
#       kill -9 of one primary that serves slots (with --key, the one that
#       serves KEY's slot); prints its port (alone, on stdout) for the
#       failure tests.
#   tools/cluster.sh restart [--dir D] --port X
#       Starts node X again from its own directory: a killed primary comes
#       back as a replica of the node promoted in its place.
#
# Defaults: D = target/cluster, P = 7000 (the tests pass their own D and a
# base port from their range), 3 primaries, 1 replica each, no hongbao
# nodes.
#
# Every node: cluster-enabled yes; appendonly yes with appendfsync always
# (an acknowledged write is on the node's disk, not only in its memory);
# save "" (no RDB snapshots beside the AOF); repl-diskless-sync-delay 0 (a
# replica that comes back is synced at once); cluster-node-timeout 2000 ms
# (below).
set -euo pipefail

# A primary unreachable for this long is marked failing by the others and
# its replica is promoted: a failover takes about this plus an election
# (~1 s). Short, so that tests and the demo see a failover in seconds;
# production clusters often run 5,000-15,000 ms to ride out network blips.
NODE_TIMEOUT_MS=2000
# The longest `up` and `restart` wait for the cluster to be ok: creating six
# nodes on a busy 2-core machine takes a few seconds.
START_DEADLINE_S=60
# The longest `down` waits after SIGTERM before SIGKILL: a node writes its
# AOF and exits well within this.
STOP_DEADLINE_S=10
# Redis Cluster's hash slots, all of which must be covered.
SLOTS=16384
# The longest `up` waits for a hongbao node to answer /status and reach the
# engine: it replays its ledger (empty here) and loads the function library.
NODE_START_DEADLINE_S=30
# The repository, for the default --hongbao.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

dir=target/cluster
key=""
port=7000
primaries=3
replicas=1
node_port=""
stopped=0
nodes=0
hongbao_port=1025
hongbao_http_port=8989
hongbao=""
server_args=()

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}
say() { echo "cluster.sh: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

parse_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
    --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
    --port) port=${2:?--port needs a number}; node_port=$2; shift 2 ;;
    --primaries) primaries=${2:?--primaries needs a number}; shift 2 ;;
    --replicas) replicas=${2:?--replicas needs a number}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --key) key=${2:?--key needs a key}; shift 2 ;;
    --node-port) hongbao_port=${2:?--node-port needs a number}; shift 2 ;;
    --node-http-port) hongbao_http_port=${2:?--node-http-port needs a number}; shift 2 ;;
    --hongbao) hongbao=${2:?--hongbao needs the path of the hongbao binary}; shift 2 ;;
    --)
      shift
      server_args=("$@")
      break
      ;;
    -h | --help) usage ;;
    *) die "unknown option '$1' (see tools/cluster.sh --help)" ;;
    esac
  done
  for n in "$port" "$primaries" "$replicas" "$nodes" "$hongbao_port" "$hongbao_http_port"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "'$n' is not a number"
  done
  [ "$primaries" -ge 1 ] || die "--primaries $primaries: at least 1"
  # Absolute, because every node runs with its own directory as cwd.
  mkdir -p "$(dirname "$dir")"
  dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
}

# Debian's redis-server (and redis-cli, from redis-tools, which it pulls
# in), installed when missing, as .ci/run installs chromium.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return
  fi
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  if command -v apt-get >/dev/null 2>&1; then
    say "redis-server is missing: installing Debian's redis-server with apt-get"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null || true
  fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    die "redis-server and redis-cli are not installed and could not be installed here (no apt-get, or not root and no passwordless sudo): install Debian's redis-server (apt-get install redis-server) and run this again"
  fi
}

# True when something listens on 127.0.0.1:$1.
port_taken() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

node_dir() { echo "$dir/node-$1"; }

# The ports of the nodes this directory holds, in order.
node_ports() {
  local d
  for d in "$dir"/node-*/; do
    [ -e "$d/redis.conf" ] || continue
    d=${d%/}
    echo "${d##*/node-}"
  done | sort -n
}

# The pid of node $1 when it is alive and is a redis-server (a stale pidfile
# whose pid was reused by another program is not ours); empty otherwise.
node_pid() {
  local f pid
  f="$(node_dir "$1")/redis.pid"
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server.*:$1\b"; then
    echo "$pid"
  fi
}

cli() {
  local p=$1
  shift
  timeout 5 redis-cli -h 127.0.0.1 -p "$p" "$@" 2>/dev/null
}

# The hongbao binary `up --nodes` runs: --hongbao, else the release build,
# else the debug build; made absolute.
find_hongbao() {
  if [ -z "$hongbao" ]; then
    local b
    for b in "$ROOT/target/release/hongbao" "$ROOT/target/debug/hongbao"; do
      if [ -x "$b" ]; then
        hongbao=$b
        return 0
      fi
    done
    die "no hongbao binary in $ROOT/target/release or $ROOT/target/debug: build one (cargo build --release) or give --hongbao PATH"
  fi
  [[ -f "$hongbao" && -x "$hongbao" ]] || die "--hongbao $hongbao is not an executable file"
  hongbao=$(cd "$(dirname "$hongbao")" && pwd)/$(basename "$hongbao")
}

# The ids of the hongbao nodes this directory holds, in order.
hongbao_ids() {
  local f
  for f in "$dir"/hongbao-*.addr; do
    [ -e "$f" ] || continue
    f=${f##*/hongbao-}
    echo "${f%.addr}"
  done | sort -n
}

# Node $1's listen and HTTP ports, as "LISTEN HTTP".
hongbao_addr() { cat "$dir/hongbao-$1.addr"; }

# The pid of hongbao node $1 when it is alive and is that node (a stale
# pidfile whose pid was reused by another program is not ours); empty
# otherwise.
hongbao_pid() {
  local f="$dir/hongbao-$1.pid" pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE -- "server .*--node-id $1( |\$)"; then
    echo "$pid"
  fi
}

# GET /status of the hongbao node whose HTTP port is $1: the whole answer,
# headers and body; empty when it does not answer within 2 s.
hongbao_status() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf "GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && cat <&3' _ "$1" 2>/dev/null || true
}

# True when the node whose HTTP port is $1 says it reaches the engine.
hongbao_available() {
  hongbao_status "$1" | tr -d ' \n' | grep -q '"available":true'
}

# Starts hongbao node $1 in the background on the cluster's redis nodes;
# its pid goes to its pidfile.
start_hongbao() {
  local i=$1 listen=$((hongbao_port + $1 - 1)) http=$((hongbao_http_port + $1 - 1)) urls="" p
  for p in $(node_ports); do
    urls+="${urls:+,}redis://127.0.0.1:$p"
  done
  mkdir -p "$dir/hongbao-$i"
  echo "$listen $http" >"$dir/hongbao-$i.addr"
  # nohup execs the server, so $! is the server's pid; a background job of
  # a script ignores SIGINT, and nohup SIGHUP: it outlives this script.
  nohup "$hongbao" server --cluster "$urls" --node-id "$i" \
    --listen "127.0.0.1:$listen" --http "127.0.0.1:$http" \
    --data-dir "$dir/hongbao-$i" "${server_args[@]}" \
    >"$dir/hongbao-$i.log" 2>&1 </dev/null &
  echo "$!" >"$dir/hongbao-$i.pid"
}

# Waits until hongbao node $1 says it reaches the engine, or fails quoting
# its log.
wait_hongbao() {
  local i=$1 listen http until
  read -r listen http <<<"$(hongbao_addr "$i")"
  until=$(($(date +%s) + NODE_START_DEADLINE_S))
  until hongbao_available "$http"; do
    [ -n "$(hongbao_pid "$i")" ] ||
      die "hongbao node $i exited at start; its log ($dir/hongbao-$i.log) ends: $(tail -n 5 "$dir/hongbao-$i.log" 2>/dev/null)"
    [ "$(date +%s)" -lt "$until" ] ||
      die "hongbao node $i does not say it reaches the engine on http://127.0.0.1:$http/status after ${NODE_START_DEADLINE_S}s: see $dir/hongbao-$i.log"
    sleep 0.2
  done
}

write_conf() {
  local p=$1 d
  d=$(node_dir "$p")
  mkdir -p "$d"
  cat >"$d/redis.conf" <<EOF
# hongbao's loopback cluster node $p (tools/cluster.sh).
port $p
bind 127.0.0.1
protected-mode yes
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
dir $d
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $NODE_TIMEOUT_MS
appendonly yes
appendfsync always
save ""
# A replica (a killed primary back, say) gets its full sync at once, not
# after Redis's default 5 s wait for more replicas to share the transfer:
# until it has it, its shard confirms no write (WAIT).
repl-diskless-sync-delay 0
EOF
}

start_node() {
  local p=$1
  redis-server "$(node_dir "$p")/redis.conf" >/dev/null ||
    die "redis-server on port $p did not start: see $(node_dir "$p")/redis.log"
}

# Waits, until $2 (epoch seconds), for node $1 to answer PING.
wait_ping() {
  local p=$1 until=$2
  until [ "$(cli "$p" ping)" = PONG ]; do
    [ "$(date +%s)" -lt "$until" ] || die "node $p does not answer PING: see $(node_dir "$p")/redis.log"
    sleep 0.1
  done
}

# True when node $1 says the cluster is ok with every slot served, and, when
# it is a replica, its link to its primary is up.
node_ok() {
  local info repl
  info=$(cli "$1" cluster info | tr -d '\r') || return 1
  grep -q '^cluster_state:ok$' <<<"$info" || return 1
  grep -q "^cluster_slots_ok:$SLOTS\$" <<<"$info" || return 1
  repl=$(cli "$1" info replication | tr -d '\r') || return 1
  if grep -q '^role:slave$' <<<"$repl"; then
    grep -q '^master_link_status:up$' <<<"$repl" || return 1
  fi
}

# Waits until every node given is ok, or fails naming the ones that are not.
wait_ok() {
  local until=$(($(date +%s) + START_DEADLINE_S)) p waiting
  while :; do
    waiting=()
    for p in "$@"; do
      node_ok "$p" || waiting+=("$p")
    done
    [ ${#waiting[@]} -eq 0 ] && return 0
    [ "$(date +%s)" -lt "$until" ] ||
      die "after ${START_DEADLINE_S}s, nodes ${waiting[*]} do not say cluster_state:ok with $SLOTS slots and a replica link up: see their redis.log in $dir, and tools/cluster.sh status --dir $dir"
    sleep 0.2
  done
}

# Fewer than 3 primaries, which `redis-cli --cluster create` refuses: the
# first $primaries ports are primaries with the slots split evenly, the rest
# replicas of them in turn; every node meets the first one. Each step is
# checked; the caller's wait_ok then waits for the cluster to be ok.
create_by_hand() {
  local last=$1 p i from to ids=() id until
  for ((i = 0; i < primaries; i++)); do
    p=$((port + i))
    from=$((SLOTS * i / primaries))
    to=$((SLOTS * (i + 1) / primaries - 1))
    [ "$(cli "$p" cluster addslotsrange "$from" "$to")" = OK ] || return 1
    echo "primary $p: slots $from-$to"
  done
  # A fresh config epoch per primary, as `--cluster create` sets them.
  for ((i = 0; i < primaries; i++)); do
    cli $((port + i)) cluster set-config-epoch $((i + 1)) >/dev/null || return 1
  done
  for ((p = port + 1; p <= last; p++)); do
    [ "$(cli "$p" cluster meet 127.0.0.1 "$port")" = OK ] || return 1
  done
  for ((i = 0; i < primaries; i++)); do
    id=$(cli $((port + i)) cluster myid) || return 1
    [ -n "$id" ] || return 1
    ids+=("$id")
  done
  until=$(($(date +%s) + START_DEADLINE_S))
  for ((p = port + primaries; p <= last; p++)); do
    i=$(((p - port - primaries) % primaries))
    # A replica can follow its primary only once it has learnt of it.
    until [ "$(cli "$p" cluster replicate "${ids[$i]}")" = OK ]; do
      [ "$(date +%s)" -lt "$until" ] || return 1
      sleep 0.2
    done
    echo "replica $p of $((port + i))"
  done
}

cmd_up() {
  ensure_redis
  [ "$nodes" -eq 0 ] || find_hongbao
  local count=$((primaries * (1 + replicas))) p last i
  last=$((port + count - 1))
  [ $((last + 10000)) -le 65535 ] || die "ports $port..$last and their cluster bus ports (+10000) must fit below 65536"
  [[ $((hongbao_port + nodes)) -le 65536 && $((hongbao_http_port + nodes)) -le 65536 ]] ||
    die "the hongbao nodes' ports (--node-port $hongbao_port, --node-http-port $hongbao_http_port, $nodes each) must fit below 65536"
  if [ -d "$dir" ]; then
    for p in $(node_ports); do
      [ -z "$(node_pid "$p")" ] || die "$dir already holds a running cluster (node $p is up): stop it with tools/cluster.sh down --dir $dir"
    done
    [ -e "$dir/cluster.env" ] || [ -z "$(ls -A "$dir")" ] ||
      die "$dir exists and is not a cluster directory: choose another --dir"
    say "removing the stopped cluster left in $dir"
    rm -rf "$dir"
  fi
  for ((p = port; p <= last; p++)); do
    ! port_taken "$p" || die "port $p on 127.0.0.1 is taken: choose another --port (nodes use $port..$last and $((port + 10000))..$((last + 10000)))"
    ! port_taken $((p + 10000)) || die "port $((p + 10000)) on 127.0.0.1 (node $p's cluster bus) is taken: choose another --port"
  done
  for ((i = 0; i < nodes; i++)); do
    ! port_taken $((hongbao_port + i)) || die "port $((hongbao_port + i)) on 127.0.0.1 (hongbao node $((i + 1))) is taken: choose another --node-port"
    ! port_taken $((hongbao_http_port + i)) || die "port $((hongbao_http_port + i)) on 127.0.0.1 (hongbao node $((i + 1))'s HTTP) is taken: choose another --node-http-port"
  done
  mkdir -p "$dir"
  trap up_failed EXIT
  printf 'port=%s\nprimaries=%s\nreplicas=%s\n' "$port" "$primaries" "$replicas" >"$dir/cluster.env"
  local addrs=() until
  for ((p = port; p <= last; p++)); do
    write_conf "$p"
    start_node "$p"
    addrs+=("127.0.0.1:$p")
  done
  until=$(($(date +%s) + START_DEADLINE_S))
  for ((p = port; p <= last; p++)); do
    wait_ping "$p" "$until"
  done
  say "creating the cluster: $primaries primaries, $replicas replica(s) each, cluster-node-timeout ${NODE_TIMEOUT_MS} ms"
  if [ "$primaries" -ge 3 ]; then
    timeout "$START_DEADLINE_S" redis-cli --cluster create "${addrs[@]}" \
      --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 ||
      die "redis-cli --cluster create failed: see $dir/create.log"
  else
    create_by_hand "$last" >"$dir/create.log" 2>&1 ||
      die "joining $primaries primaries by hand failed: see $dir/create.log"
  fi
  # shellcheck disable=SC2046 # one port per word
  wait_ok $(node_ports)

  say "up: ${addrs[*]} in $dir"

  # The hongbao nodes, once the engine is ok; stopped by `down` before the
  # redis nodes.
  if [ "$nodes" -gt 0 ]; then
    say "starting $nodes hongbao node(s) ($hongbao)"
    for ((i = 1; i <= nodes; i++)); do
      start_hongbao "$i"
    done
    for ((i = 1; i <= nodes; i++)); do
      wait_hongbao "$i"
    done
    say "up: hongbao nodes on 127.0.0.1:$hongbao_port..$((hongbao_port + nodes - 1)) (HTTP $hongbao_http_port..$((hongbao_http_port + nodes - 1)))"
  fi
  trap - EXIT
  cmd_status
}

# Stops the pids given: SIGTERM, then SIGKILL to those still up after the
# deadline.
stop_pids() {
  local pid until alive
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  until=$(($(date +%s) + STOP_DEADLINE_S))
  while :; do
    alive=()
    for pid in "$@"; do
      ! kill -0 "$pid" 2>/dev/null || alive+=("$pid")
    done
    [ ${#alive[@]} -eq 0 ] && return 0
    if [ "$(date +%s)" -ge "$until" ]; then
      say "pids ${alive[*]} still up ${STOP_DEADLINE_S}s after SIGTERM: SIGKILL"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

# Stops exactly the processes whose pidfiles $dir holds: the hongbao nodes
# first (they use the redis nodes until they stop), then the redis nodes.
# Sets `stopped` to their count.
stop_nodes() {
  local p i pid hongbao_pids=() redis_pids=()
  for i in $(hongbao_ids); do
    pid=$(hongbao_pid "$i")
    [ -z "$pid" ] || hongbao_pids+=("$pid")
  done
  stop_pids "${hongbao_pids[@]}"
  for p in $(node_ports); do
    pid=$(node_pid "$p")
    [ -z "$pid" ] || redis_pids+=("$pid")
  done
  stop_pids "${redis_pids[@]}"
  stopped=$((${#hongbao_pids[@]} + ${#redis_pids[@]}))
}

cmd_down() {
  [ -d "$dir" ] || {
    say "no cluster in $dir"
    return 0
  }
  [ -e "$dir/cluster.env" ] || die "$dir is not a cluster directory (no cluster.env): not removing it"
  stop_nodes
  rm -rf "$dir"
  say "down: stopped $stopped process(es), removed $dir"
}

# On a failed `up`, the nodes it started are stopped; their logs stay in
# $dir (the next `up` clears it).
up_failed() {
  local status=$?
  [ "$status" -ne 0 ] || return 0
  say "up failed: stopping the nodes it started (their logs stay in $dir)"
  stop_nodes
  exit "$status"
}

cmd_status() {
  [ -e "$dir/cluster.env" ] || die "no cluster in $dir (start one with tools/cluster.sh up --dir $dir)"
  local p pid role state
  printf '%-6s %-8s %-8s %s\n' port pid role cluster_state
  for p in $(node_ports); do
    pid=$(node_pid "$p")
    if [ -z "$pid" ]; then
      printf '%-6s %-8s %-8s %s\n' "$p" - down -
      continue
    fi
    role=$(cli "$p" cluster nodes | awk '$3 ~ /myself/ { print ($3 ~ /master/) ? "primary" : "replica" }')
    state=$(cli "$p" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')
    printf '%-6s %-8s %-8s %s\n' "$p" "$pid" "${role:-?}" "${state:-?}"
  done
  local i listen http engine ids
  ids=$(hongbao_ids)
  [ -z "$ids" ] || printf '\n%-8s %-7s %-7s %-8s %s\n' hongbao listen http pid engine
  for i in $ids; do
    read -r listen http <<<"$(hongbao_addr "$i")"
    pid=$(hongbao_pid "$i")
    if [ -z "$pid" ]; then
      engine=down
    elif hongbao_available "$http"; then
      engine=available
    else
      engine=unavailable
    fi
    printf '%-8s %-7s %-7s %-8s %s\n' "$i" "$listen" "$http" "${pid:--}" "$engine"
  done
}

cmd_kill_primary() {
  [ -e "$dir/cluster.env" ] || die "no cluster in $dir"
  local p ask="" victim pid
  for p in $(node_ports); do
    if [ -n "$(node_pid "$p")" ] && [ "$(cli "$p" ping)" = PONG ]; then
      ask=$p
      break
    fi
  done
  [ -n "$ask" ] || die "no node of $dir answers"
  # A primary that serves slots (with --key, KEY's slot) and is not already
  # failing: `cluster nodes` lines are "id ip:port@bus flags primary-id
  # ping pong epoch link slots...", a slot range being "A-B" or "A".
  local slot=-1
  if [ -n "$key" ]; then
    slot=$(cli "$ask" cluster keyslot "$key")
  fi
  for victim in $(cli "$ask" cluster nodes | awk -v slot="$slot" '$3 ~ /master/ && $3 !~ /fail/ && $8 == "connected" && NF >= 9 {
      serves = (slot < 0)
      for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n > 1) ? r[2] : r[1]; if (slot >= lo + 0 && slot <= hi + 0) serves = 1 }
      if (serves) { split($2, a, "[:@]"); print a[2] }
    }' | sort -n); do
    pid=$(node_pid "$victim")
    if [ -n "$pid" ]; then
      kill -KILL "$pid"
      say "killed primary $victim (pid $pid) with SIGKILL"
      echo "$victim"
      return 0
    fi
  done
  die "no live primary of $dir found to kill"
}

cmd_restart() {
  [ -e "$dir/cluster.env" ] || die "no cluster in $dir"
  [ -n "$node_port" ] || die "restart needs --port X (one of: $(node_ports | tr '\n' ' '))"
  [ -e "$(node_dir "$node_port")/redis.conf" ] || die "node $node_port is not in $dir (nodes: $(node_ports | tr '\n' ' '))"
  [ -z "$(node_pid "$node_port")" ] || die "node $node_port is already running"
  ! port_taken "$node_port" || die "port $node_port on 127.0.0.1 is taken by another program"
  start_node "$node_port"
  wait_ping "$node_port" $(($(date +%s) + START_DEADLINE_S))
  wait_ok "$node_port"
  say "node $node_port is back: $(cli "$node_port" cluster nodes | awk '$3 ~ /myself/ { print ($3 ~ /master/) ? "primary" : "replica" }')"
}

[ $# -ge 1 ] || usage
command=$1
shift
parse_options "$@"
case "$command" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
kill-primary) cmd_kill_primary ;;
restart) cmd_restart ;;
-h | --help | help) usage ;;
*) die "unknown command '$command': up, down, status, kill-primary or restart" ;;
esac
