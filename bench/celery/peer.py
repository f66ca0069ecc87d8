"""The Celery peer of `keel-bench compare-celery`: Celery 5 with Redis as the
broker, its default prefork worker (concurrency = cores), and one PostgreSQL
write per task, measured the way `keel-bench e2e` measures Keel.

    python peer.py run --tasks 10000 --connections 32 --database-url … --redis-url …

prints one JSON object: enqueue (row inserted, then `.delay()`), end to end
(first create to the last finished row, by the database clock) and the idle
enqueue→start latencies of a trickle. The worker is started by this script
(`celery -A peer worker`) and stopped after.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import psycopg
from celery import Celery

BROKER = os.environ.get("KEEL_CELERY_BROKER", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get("KEEL_CELERY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/keel_bench")

app = Celery("peer", broker=BROKER)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

_conn = None


def _db():
    """One connection per worker process, autocommit: one UPDATE, one commit."""
    global _conn
    if _conn is None:
        _conn = psycopg.connect(DATABASE_URL, autocommit=True)
    return _conn


@app.task(name="peer.noop")
def noop(task_id):
    _db().execute(
        "UPDATE celery_bench_tasks SET status = 'completed', started_at = coalesce(started_at, clock_timestamp()), "
        "finished_at = clock_timestamp() WHERE id = %s",
        (task_id,),
    )


def setup(conn):
    conn.execute(
        "CREATE TABLE IF NOT EXISTS celery_bench_tasks (id uuid PRIMARY KEY, run text NOT NULL, "
        "status text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        "started_at timestamptz, finished_at timestamptz)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS celery_bench_tasks_run ON celery_bench_tasks (run, status)")
    # As the Keel side: each run starts from a fresh install's empty table (not
    # from every earlier run's rows), in the state autovacuum keeps a server near.
    conn.execute("DELETE FROM celery_bench_tasks")
    conn.execute("VACUUM (ANALYZE) celery_bench_tasks")


def create(conn, run):
    task_id = str(uuid.uuid4())
    conn.execute("INSERT INTO celery_bench_tasks (id, run, status) VALUES (%s, %s, 'pending')", (task_id, run))
    noop.delay(task_id)


def wait_done(conn, run, n, timeout=600):
    """As Keel's side: a cheap index probe for any row not yet completed while
    the tasks run, then the count and the last finish once."""
    deadline = time.time() + timeout
    while True:
        (waiting,) = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM celery_bench_tasks WHERE run = %s AND status = 'pending')",
            (run,),
        ).fetchone()
        if not waiting:
            done, last = conn.execute(
                "SELECT count(*), max(finished_at) FROM celery_bench_tasks WHERE run = %s AND status = 'completed'",
                (run,),
            ).fetchone()
            if done >= n:
                return last
        if time.time() > deadline:
            raise SystemExit(f"not all {n} Celery tasks completed within {timeout} s")
        time.sleep(0.02)


def throughput(n, connections):
    run = f"t-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        start_db = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    started = time.time()
    counter = iter(range(n))
    lock = threading.Lock()

    def creator():
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                create(conn, run)

    threads = [threading.Thread(target=creator) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    enqueue_secs = time.time() - started
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        last = wait_done(conn, run, n)
    return n / enqueue_secs, n / (last - start_db).total_seconds()


def trickle(n, rate):
    run = f"l-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        for _ in range(n):
            began = time.time()
            create(conn, run)
            time.sleep(max(0.0, 1.0 / rate - (time.time() - began)))
        wait_done(conn, run, n)
        delays = [
            r[0]
            for r in conn.execute(
                "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM celery_bench_tasks WHERE run = %s "
                "ORDER BY 1",
                (run,),
            ).fetchall()
        ]
    q = lambda p: float(delays[min(len(delays) - 1, int(p * len(delays)))])
    return q(0.5), q(0.99), float(delays[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--trickle", type=int, default=200)
    parser.add_argument("--trickle-rate", type=int, default=50)
    args = parser.parse_args()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        setup(conn)
    app.connection_for_write().default_channel.client.flushdb()
    here = os.path.dirname(os.path.abspath(__file__))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "peer", "worker", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        cwd=here,
        env={**os.environ, "PYTHONPATH": here},
    )
    try:
        # Ready when an inspect ping answers.
        deadline = time.time() + 60
        while not app.control.inspect(timeout=0.5).ping():
            if time.time() > deadline:
                raise SystemExit("the Celery worker did not start")
        enqueue_tps, e2e_tps = throughput(args.tasks, args.connections)
        p50, p99, worst = trickle(args.trickle, args.trickle_rate)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    print(json.dumps({
        "enqueue_tps": round(enqueue_tps), "e2e_tps": round(e2e_tps),
        "start_p50_ms": round(p50, 2), "start_p99_ms": round(p99, 2), "start_max_ms": round(worst, 2),
        "concurrency": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
