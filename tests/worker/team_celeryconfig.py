"""A team's existing Celery settings module (celeryconfig style), as the platform meets it:
its `imports` name the task modules; some settings are the app's to choose, some are the
platform's (and are overridden from the catalog)."""

imports = ["tests.worker.semantics_tasks"]
result_compression = "zlib"  # the app's: kept
timezone = "Europe/Paris"  # the platform's: schedules are UTC, as the catalog says
task_acks_late = False  # the platform's: late acks stay on
broker_url = "amqp://guest@localhost//"  # the platform's: the catalog's broker
