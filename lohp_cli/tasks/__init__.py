"""Task families and tasks, data sets, target models and their layouts.

Importing the package registers the built-in families (:mod:`lohp_cli.tasks.classes`) and
target models (:mod:`lohp_cli.tasks.models`, and ``lora`` in :mod:`lohp_cli.tasks.lora_model`).
"""

from lohp_cli.tasks import lora_model  # noqa: F401 - registers the lora target model
from lohp_cli.tasks.classes import ClassSubsetFamily, ClassTask
from lohp_cli.tasks.families import FAMILIES, Task, TaskFamily, make_family, register_family

__all__ = [
    "FAMILIES",
    "ClassSubsetFamily",
    "ClassTask",
    "Task",
    "TaskFamily",
    "make_family",
    "register_family",
]
