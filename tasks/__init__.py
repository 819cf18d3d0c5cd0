"""The Celery app, configured from celeryconfig.py.

The API imports only this (to send tasks by name); task code and the model hooks
are imported by workers through the `imports` setting, so TensorFlow stays out of
the API process.
"""

from celery import Celery

celery_app = Celery("imageclf")
celery_app.config_from_object("celeryconfig")
