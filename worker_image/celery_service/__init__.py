"""The Celery application of the platform: workers, beat and Flower all run this package."""
