"""The STANet method as a library: data, extraction, networks, training, CAMs, pseudo-GT, metrics.

Nothing in this package imports Celery, Flask or the database: every long-running function takes a
:class:`sta_models.callbacks.Callbacks` for progress, metrics and cancellation so the job system can
wrap it thinly.
"""

__version__ = "0.1.0"
