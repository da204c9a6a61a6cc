"""CDK stacks and constructs of the Celery platform."""
