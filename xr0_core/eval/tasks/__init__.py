"""Registry of downstream task families (D8; STYLE 5), one module per family.

A family module exposes:

- ``FAMILY`` -- its name, the first segment of every task key (``classification/label_kl``);
- ``plan(data) -> (task names, skipped reasons)`` -- which tasks the dataset's columns allow;
- ``prepare(task, data, ctx) -> Prepared | str`` -- targets in view space, built once per evaluation and
  shared by every backbone; a string says why the task cannot run on this data (listed as skipped);
  an annotation that is wrong raises :class:`~xr0_core.eval.tasks.base.EvalDataError` naming its row;
- ``run(task, data, prepared, features, ctx) -> TaskOutput`` -- trains the light head on the train rows'
  frozen features and scores the test rows.

:class:`TaskFamily` records which inputs a family needs, so the suite extracts patch tokens and loads the
text tower only when some selected task uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from xr0_core.eval.summary import FAMILIES
from xr0_core.registry import Registry


@dataclass(frozen=True)
class TaskFamily:
    name: str
    module: ModuleType
    needs_patches: bool
    needs_text: bool  # some of its tasks use the frozen text tower


TASK_FAMILIES: Registry[TaskFamily] = Registry("evaluation task family")


def _register() -> None:
    from . import classification, grounding, landmarks, report_generation, retrieval, segmentation

    for module, patches, text in ((classification, False, False), (retrieval, False, True),
                                  (segmentation, True, False), (landmarks, True, False),
                                  (grounding, True, True), (report_generation, True, True)):
        TASK_FAMILIES.add(module.FAMILY, TaskFamily(module.FAMILY, module, patches, text))


_register()

FAMILY_ORDER = FAMILIES  # report order (xr0_core/eval/summary.py, which pages read without importing the tasks)


def family_of(task: str) -> TaskFamily:
    """The family of a task key (its first ``/`` segment)."""
    return TASK_FAMILIES.get(task.split("/", 1)[0])
