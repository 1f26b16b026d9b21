"""Task families, data sets, target models and task inputs."""

from lohp_cli.tasks.families import FAMILIES, TaskFamily, TaskSpec, make_family, register_family

__all__ = ["FAMILIES", "TaskFamily", "TaskSpec", "make_family", "register_family"]
