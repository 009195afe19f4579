"""``stapipe`` sub-commands that need only the ML library (no Celery, Flask or database)."""
