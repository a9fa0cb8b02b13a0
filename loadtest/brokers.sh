# Shared by the load-test scripts that start brokers in turn (compare.sh, transports.sh);
# sourced after scripts/lib.sh. Expects $work (a scratch directory), $QUICK and $LOAD.

broker_pid=""

# free_port: a TCP port nobody listens on now, on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_tcp_port PORT NAME: waits (5 s at most) until something listens on 127.0.0.1:PORT;
# otherwise prints $work/NAME.log and exits.
wait_tcp_port() {
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" 2>/dev/null; then
      sleep 0.2; return 0
    fi
    sleep 0.05
  done
  echo "$2 did not start; log:" >&2; cat "$work/$2.log" >&2; exit 1
}

# stop_broker: stops the broker started last and waits for it.
stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

# mosquitto_limits: mosquitto.conf lines for limits equivalent to messs's defaults: 10,000
# queued and 1,024 inflight per client, no persistence, anonymous clients.
mosquitto_limits() {
  cat <<CONF
allow_anonymous true
persistence false
max_queued_messages 10000
max_inflight_messages 1024
max_connections -1
log_dest none
CONF
}

# scale N: N, or N/10 with QUICK=1.
scale() { if [ "$QUICK" = 1 ]; then echo $(( $1 / 10 )); else echo "$1"; fi; }

# record_run RESULTS LABEL_JSON ARGS...: runs "$LOAD ARGS... --broker-pid PID --json" and
# appends {LABEL_JSON,"result":...} (or an "error") to RESULTS.
record_run() {
  local results=$1 label=$2; shift 2
  local json
  if json=$($LOAD "$@" --broker-pid "$broker_pid" --json 2>"$work/load.err"); then
    echo "{$label,\"result\":$json}" >>"$results"
  else
    echo "run {$label} failed: $(tail -n 3 "$work/load.err")" >&2
    echo "{$label,\"error\":\"run failed\"}" >>"$results"
  fi
}
