# wait.sh PORT PIDFILE: wait until the server answers /health, or report that it died
for i in $(seq 1 150); do
  curl -sf -m 2 localhost:$1/health >/dev/null && { echo "port $1 healthy after $((i*2)) s"; exit 0; }
  kill -0 $(cat $2) 2>/dev/null || { echo "server on port $1 DIED"; exit 1; }
  sleep 2
done; echo "port $1 not healthy in 300 s"; exit 1
