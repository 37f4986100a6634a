"""The Celery app and tasks that compat/test_celery.py runs on a real worker.

The worker imports this module (``celery -A celery_tasks worker``) and builds
its app from environment variables; the test process builds the same app
with `make_app`. Tasks leave their traces in files under the state dir, so
the test can see what ran, in which order and how often.
"""

import os
import pathlib
import time

from celery import Celery
from kombu import Queue


def make_app(broker_url, queue, state_dir, priority=False):
    app = Celery("celery_tasks", broker=broker_url, backend="rpc://")
    arguments = {"x-max-priority": 10} if priority else None
    app.conf.update(
        task_default_queue=queue,
        task_queues=[Queue(queue, routing_key=queue, queue_arguments=arguments)],
        task_default_routing_key=queue,
        broker_connection_retry_on_startup=True,
        # keep each run's traces apart
        result_persistent=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    state = pathlib.Path(state_dir)

    def bump(name):
        """Count one more run of `name`; returns the new count."""
        path = state / f"{name}.count"
        count = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(count))
        return count

    @app.task(name="compat.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="compat.record", shared=False)
    def record(label):
        with open(state / "order.txt", "a") as fh:
            fh.write(label + "\n")
        return label

    @app.task(name="compat.stall_once", shared=False, acks_late=True)
    def stall_once(token):
        """First run: say so and hang (the test kills the worker); the
        redelivered run finishes."""
        runs = bump(token)
        if runs == 1:
            (state / f"{token}.started").write_text("1")
            time.sleep(120)
        return f"done on run {runs}"

    @app.task(name="compat.flaky", shared=False, bind=True, max_retries=5)
    def flaky(self, token, failures):
        runs = bump(token)
        if runs <= failures:
            raise self.retry(countdown=0.2, exc=RuntimeError(f"failure {runs}"))
        return runs

    return app


if os.environ.get("HOPPER_CELERY_BROKER"):
    app = make_app(
        os.environ["HOPPER_CELERY_BROKER"],
        os.environ["HOPPER_CELERY_QUEUE"],
        os.environ["HOPPER_CELERY_STATE"],
        priority=os.environ.get("HOPPER_CELERY_PRIORITY") == "1",
    )
