"""A real Celery worker (a subprocess, threads pool of one) with the broker under test:
round trip with the rpc:// result backend, acks_late tasks redone after the
worker is killed -9, countdown tasks that must not hold back plain tasks,
a priority queue, and retries. Tasks are in compat/celery_tasks.py.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from celery_tasks import make_app

HERE = pathlib.Path(__file__).resolve().parent
READY_TIMEOUT = 20.0


def wait_for(predicate, timeout, what, on_fail=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{on_fail()}")
        time.sleep(0.05)


class Worker:
    """`celery worker` in its own process group, logging to a file."""

    def __init__(self, env, workdir, prefetch_multiplier, name):
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
                    # (not the solo pool: there the worker sat 10 s between
                    # tasks after its result connection opened, with RabbitMQ too)
                    "--pool=threads", "--concurrency=1",
                    f"--prefetch-multiplier={prefetch_multiplier}",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", f"{name}@compat", "--loglevel=INFO",
                ],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: b" ready." in self.log_path.read_bytes() or self.proc.poll() is not None,
            READY_TIMEOUT,
            "the Celery worker to be ready",
            self.log_tail,
        )
        if self.proc.poll() is not None:
            pytest.fail(f"the Celery worker exited with {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self):
        return "---- celery worker log ----\n" + "\n".join(
            self.log_path.read_text(errors="replace").splitlines()[-40:]
        )

    def kill9(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        # The test is over: a warm shutdown would only wait for held countdown
        # tasks. Unacked tasks go back to the queue, which is deleted next.
        self.kill9()


class CeleryRun:
    """One test's Celery setup: its own queue, state dir and workers."""

    def __init__(self, broker, tmp_path, priority=False):
        self.broker = broker
        self.queue = f"compat.celery.{uuid.uuid4().hex[:8]}"
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.workdir = tmp_path
        self.workers = []
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            HOPPER_CELERY_BROKER=broker.url(),
            HOPPER_CELERY_QUEUE=self.queue,
            HOPPER_CELERY_STATE=str(self.state),
            HOPPER_CELERY_PRIORITY="1" if priority else "0",
        )
        self.app = make_app(broker.url(), self.queue, self.state, priority=priority)

    def task(self, name):
        return self.app.tasks[f"compat.{name}"]

    def worker(self, prefetch_multiplier=1):
        w = Worker(self.env, self.workdir, prefetch_multiplier, f"w{len(self.workers)}")
        self.workers.append(w)
        return w

    def logs(self):
        return "\n".join(w.log_tail() for w in self.workers)

    def close(self):
        for w in self.workers:
            w.stop()
        try:
            self.app.close()
        except Exception:
            pass
        try:
            conn = self.broker.connect()
            try:
                conn.channel().queue_delete(self.queue)
            finally:
                conn.close()
        except Exception:
            pass


@pytest.fixture
def celery_run(broker, tmp_path):
    run = CeleryRun(broker, tmp_path)
    yield run
    run.close()


@pytest.fixture
def celery_priority_run(broker, tmp_path):
    run = CeleryRun(broker, tmp_path, priority=True)
    yield run
    run.close()


def test_round_trip_with_the_rpc_result_backend(celery_run):
    celery_run.worker()
    add = celery_run.task("add")
    results = [add.delay(i, i) for i in range(5)]
    assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6, 8], celery_run.logs()


@pytest.mark.timeout(60)
def test_acks_late_task_is_redone_after_the_worker_is_killed(celery_run):
    first = celery_run.worker()
    result = celery_run.task("stall_once").delay("job")
    wait_for(
        lambda: (celery_run.state / "job.started").exists(),
        10,
        "the task to start",
        celery_run.logs,
    )
    first.kill9()
    celery_run.worker()
    assert result.get(timeout=15) == "done on run 2", celery_run.logs()


@pytest.mark.timeout(45)
def test_countdown_tasks_do_not_hold_back_a_plain_task(celery_run):
    """Prefetch 2 (one thread, multiplier 2). The worker holds countdown tasks
    unacked and raises its prefetch for each (with global basic.qos, as kombu
    does for RabbitMQ 3.x); a plain task sent after four of them runs at once,
    not after the countdowns."""
    celery_run.worker(prefetch_multiplier=2)
    add = celery_run.task("add")
    for i in range(4):
        add.apply_async((i, 100), countdown=120)
    started = time.monotonic()
    assert add.delay(2, 2).get(timeout=15) == 4, celery_run.logs()
    assert time.monotonic() - started < 15


def test_priority_queue_runs_the_urgent_task_first(celery_priority_run):
    run = celery_priority_run
    record = run.task("record")
    # Queued before any worker runs: the worker (prefetch 1) then takes them
    # by priority, FIFO within a priority.
    for i in range(3):
        record.apply_async((f"low-{i}",), priority=1)
    last = record.apply_async(("urgent",), priority=9)
    wait_for(lambda: queue_depth(run) == 4, 10, "four queued tasks")
    run.worker(prefetch_multiplier=1)
    last.get(timeout=10)
    order_file = run.state / "order.txt"
    wait_for(
        lambda: order_file.exists() and len(order_file.read_text().split()) == 4,
        10,
        "all four tasks to run",
        run.logs,
    )
    assert order_file.read_text().split() == ["urgent", "low-0", "low-1", "low-2"]


def queue_depth(run):
    conn = run.broker.connect()
    try:
        ch = conn.channel()
        return ch.queue_declare(
            run.queue, passive=True
        ).method.message_count
    finally:
        conn.close()


def test_retries_until_the_task_succeeds(celery_run):
    celery_run.worker()
    result = celery_run.task("flaky").delay("flaky", 2)
    assert result.get(timeout=15) == 3, celery_run.logs()
    assert (celery_run.state / "flaky.count").read_text() == "3"
