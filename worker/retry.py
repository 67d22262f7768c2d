"""What a delivery of a job or stage task tells Celery besides its outcome: the work is
held by another live worker (`Busy`: deliver again after a lease), or it hit a system error
and went back to the queue (`Retry`: deliver again, counted against the retries)."""


class Busy(Exception):
    """Another live worker holds the job or stage: try again later."""


class Retry(Exception):
    """A system error in a job or stage; it went back to the queue."""
