#!/usr/bin/env bash
# A backfill on a process cluster of 3 executors, N times (default 10), SIGTERM to the first
# executor that runs a task; prints how many runs completed with all 90 dates (issue 20).
# Needs a dev build: cargo build --workspace --bins. Usage: scripts/executor-loss-loop.sh [N]
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
B="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
W="${SLUICE_LOOP_DIR:-/tmp/sluice-executor-loss}"; N=${1:-10}
mkdir -p $W; cd $W
[ -d data ] || $B/sluice gen churn --users 4000 --start 2024-01-01 --days 150 --seed 23 --out data >/dev/null 2>&1
ok=0
for i in $(seq 1 $N); do
  rm -rf run; mkdir -p run/e1 run/e2 run/e3
  $B/sluice-scheduler --bind 127.0.0.1:50081 --executor-timeout-seconds 5 > run/s.log 2>&1 & S=$!
  for k in 1 2 3; do
    for t in $(seq 1 100); do grep -q "listening on" run/s.log && break; sleep 0.05; done
    $B/sluice-executor --scheduler 127.0.0.1:50081 --bind 127.0.0.1:0 --work-dir run/e$k --vcores 2 --heartbeat-interval-seconds 1 > run/e$k.log 2>&1 &
    eval E$k=$!
  done
  sleep 1
  $B/sluice backfill "$ROOT/sql/jobs/churn.yaml" --data-dir data --output run/out --from 2024-03-01 --to 2024-05-29 --chunk-days 15 --scheduler 127.0.0.1:50081 --no-register > run/b.log 2>&1 & BF=$!
  victim=""
  for t in $(seq 1 600); do
    for k in 1 2 3; do grep -q "Execute task" run/e$k.log 2>/dev/null && victim=$k && break; done
    [ -n "$victim" ] && break; sleep 0.05
  done
  if [ -z "$victim" ]; then echo "run $i: no executor ran a task within 30 s"; fi
  [ -n "$victim" ] && eval kill -TERM \$E$victim
  wait $BF; rc=$?
  dates=$(ls run/out 2>/dev/null | grep -c feature_date)
  echo "run $i: victim e$victim rc=$rc dates=$dates $(grep -o 'already exists' run/b.log | head -1)"
  [ $rc = 0 ] && [ "$dates" = 90 ] && ok=$((ok+1))
  kill $S $E1 $E2 $E3 2>/dev/null; wait 2>/dev/null
done
echo "completed $ok of $N"
