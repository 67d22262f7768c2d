"""Celery workers: thin tasks that load a job, run the engine, and write results back."""
