"""Which workers are alive: the one query behind ``GET /workers`` (and so ``ingest workers``)."""

from datetime import timedelta

from sqlalchemy import Select, func, select

from app.runs.models import Worker


def live_workers_query(lease_seconds: int) -> Select[Worker]:
    """Workers that beat within the last lease, the latest started first.

    A worker beats every third of a lease; one that missed a whole lease has died or frozen,
    its leases have lapsed and other workers take its work over. Its row stays until the
    reconciler forgets it (minutes later, or never when no worker is left to run it), so the
    age of the heartbeat, measured by Postgres' clock that wrote it, decides.
    """
    return (
        select(Worker)
        .where(Worker.last_beat > func.now() - timedelta(seconds=lease_seconds))
        .order_by(Worker.started_at.desc(), Worker.id)
    )
