"""GPU workers: the Celery app, the job task ("lease, run, record"), the trainer's child process, the reconciler.

    app.py        the Celery app (broker from TTM_BROKER_URL, else kombu's filesystem transport under TTM_HOME)
    tasks.py      `ttm.run_job(job_id)`: the only task
    lease.py      the job-row lease: take it atomically, renew it, tell whether we still hold it
    runner.py     the task body: lease, resolve the spec, start the trainer child, supervise it, record the end
    child.py      the trainer's process (`python -m worker.child`), or torchrun's ranks for a multi-GPU job
    record.py     what a run writes into the database: metric rows and checkpoint rows, upserted
    resolve.py    artifact ids, teacher jobs and dataset roots → paths the trainer can open
    reconcile.py  re-enqueue jobs whose worker or message was lost; fail them after TTM_MAX_ATTEMPTS
    proc.py       process plumbing: die with the parent, stop a process group, watch a supervisor
    cli.py        `ttm serve` and `ttm worker` (and `ttm reconcile`)

Nothing here imports torch in the worker process itself: only the child does, so every job gets a fresh CUDA
context and a crash of the trainer never takes the worker down.
"""
