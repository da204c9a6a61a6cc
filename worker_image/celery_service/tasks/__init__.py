"""Task modules. Add yours here and list it in factory.TASK_MODULES."""
