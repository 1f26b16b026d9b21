"""Task families and tasks, data sets, target models and their layouts.

Importing the package registers the built-in families (:mod:`lohp_cli.tasks.classes`, the
few-shot episodes of :mod:`lohp_cli.tasks.fewshot`) and target models
(:mod:`lohp_cli.tasks.models`).
"""

from lohp_cli.tasks.classes import ClassSubsetFamily, ClassTask
from lohp_cli.tasks.families import FAMILIES, Task, TaskFamily, make_family, register_family
from lohp_cli.tasks.fewshot import Episode, FewShotFamily

__all__ = [
    "FAMILIES",
    "ClassSubsetFamily",
    "ClassTask",
    "Episode",
    "FewShotFamily",
    "Task",
    "TaskFamily",
    "make_family",
    "register_family",
]
