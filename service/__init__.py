"""ppr-audit's HTTP gateway (FastAPI): validates jobs, stores inputs, enqueues job ids."""
