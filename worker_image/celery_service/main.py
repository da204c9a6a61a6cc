"""The process-wide app, configured from the environment: `celery -A celery_service.main`.

Start processes through `python -m celery_service ...`, which validates the settings first
and reports problems in one line each instead of a traceback.
"""

from celery_service.factory import create_app
from celery_service.settings import Settings

app = create_app(Settings.from_env())
