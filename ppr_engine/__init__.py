"""ppr_engine: the science of ppr-audit as a plain library.

Models, data, triggers, purification methods, post-purification attacks and the audit
itself live here. This package never imports FastAPI, Celery, Redis or SQLAlchemy: the
service and the worker use it, never the other way round.
"""

__version__ = "0.1.0"
