"""A page of the job list (`GET /v1/jobs`), and one job (`GET /v1/jobs/{id}`), on a deep queue: the queries the
routes run, in-process.

A fresh PostgreSQL database (dropped after) gets QUEUED queued jobs of one user (through the job writer's own
insert, in batches of 1,000), then ANALYZE. For the newest page and for a page in the middle of the queue, the
route's two steps are timed: the page itself (`list_jobs`, newest first, LIMIT 50) and its queue positions
(`queue_positions`); and GET /v1/jobs/{id}'s one statement (`get_job_with_position`) for the oldest, the middle
and the newest job. Best of five, after one untimed run. Nothing else runs against the database meanwhile.

    .venv/bin/python -m benchmarks.job_list [--queued 90000]   # about 1 minute; benchmarks/results/job_list-cpu.json
"""
from __future__ import annotations

import argparse
import secrets
import time

from benchmarks.common import write_result

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 50


def best_ms(run, repeats: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 2)


def main(argv: list[str] | None = None) -> None:
    import psycopg
    from sqlalchemy import text

    from service.db import get_engine, make_sessionmaker, session_scope
    from service.deps import Principal
    from service.migrate import upgrade_to_head
    from service.queries.jobs import get_job_with_position, insert_jobs, list_jobs, new_job_row, queue_positions
    from service.queries.users import create_user
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=90_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    name = f"ttm_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        upgrade_to_head(settings)
        with session_scope(settings) as session:
            user, _ = create_user(session, "bench")
            who = Principal(user.id, user.name, False)
        engine = get_engine(settings)
        for start in range(0, args.queued, 1000):
            with engine.connect() as conn:
                insert_jobs(conn, [new_job_row(who.id, name="j", spec={"name": "j"}, queue="cpu",
                                               idempotency_key=None, request_hash=None)
                                   for _ in range(min(1000, args.queued - start))])
        with engine.connect() as conn:
            conn.execute(text("ANALYZE jobs"))
            conn.commit()
        make_session = make_sessionmaker(get_engine(settings, autocommit=True))
        figures: dict[str, dict[str, float]] = {}
        with make_session() as session:
            middle = session.scalar(text("SELECT id FROM jobs ORDER BY id OFFSET :n LIMIT 1"),
                                    {"n": args.queued // 2})
            for label, before in (("newest page", None), ("middle page", middle)):
                rows = list_jobs(session, who, states=None, before=before, limit=PAGE)
                jobs = [job for job, _ in rows]
                positions = queue_positions(session, jobs)
                figures[label] = {
                    "list_ms": best_ms(lambda: list_jobs(session, who, states=None, before=before, limit=PAGE)),
                    "positions_ms": best_ms(lambda: queue_positions(session, jobs)),
                    "positions": [min(positions.values()), max(positions.values())]}
                print(f"{label}: page {figures[label]['list_ms']} ms, positions {figures[label]['positions_ms']} ms "
                      f"(positions {figures[label]['positions'][0]}-{figures[label]['positions'][1]})", flush=True)
            for label, offset in (("oldest job", 0), ("middle job", args.queued // 2), ("newest job", args.queued - 1)):
                job_id = session.scalar(text("SELECT id FROM jobs ORDER BY id OFFSET :n LIMIT 1"), {"n": offset})
                found = get_job_with_position(session, who, job_id)
                assert found is not None
                figures[label] = {"get_ms": best_ms(lambda: get_job_with_position(session, who, job_id)),
                                  "position": found[2]}
                print(f"{label}: {figures[label]['get_ms']} ms (position {found[2]})", flush=True)
    finally:
        from service.db import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    path = write_result("job_list", {"queued": args.queued, "page": PAGE, "figures": figures}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
