"""Task families and tasks, data sets, target models and their layouts.

Importing the package registers the built-in families (:mod:`lohp_cli.tasks.classes`, the
domain family :mod:`lohp_cli.tasks.rotated`, the few-shot episodes of
:mod:`lohp_cli.tasks.fewshot`, the glyph tasks of :mod:`lohp_cli.tasks.glyphs`) and target
models (:mod:`lohp_cli.tasks.models`, and ``lora`` in :mod:`lohp_cli.tasks.lora_model`).
"""

from lohp_cli.tasks import lora_model  # noqa: F401 - registers the lora target model
from lohp_cli.tasks.classes import ClassSubsetFamily, ClassTask
from lohp_cli.tasks.episodes import Episode
from lohp_cli.tasks.families import FAMILIES, Task, TaskFamily, make_family, register_family
from lohp_cli.tasks.fewshot import FewShotFamily
from lohp_cli.tasks.glyphs import GlyphFamily
from lohp_cli.tasks.rotated import RotatedFamily, RotatedTask

__all__ = [
    "FAMILIES",
    "ClassSubsetFamily",
    "ClassTask",
    "RotatedFamily",
    "RotatedTask",
    "Episode",
    "FewShotFamily",
    "GlyphFamily",
    "Task",
    "TaskFamily",
    "make_family",
    "register_family",
]
