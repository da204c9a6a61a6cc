"""The platform's task base class and helpers for a team's tasks (celery_service.tasks.base)."""
