"""imageclf: an image-classification service on a Celery task queue, and its command line (`imageclf`)."""

#: The one place the version is written (pyproject.toml reads it; CHANGELOG.md names each release).
__version__ = "0.2.0"
