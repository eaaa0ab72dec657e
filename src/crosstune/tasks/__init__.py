"""Tasks: what is predicted. One module per task (:mod:`crosstune.tasks.classification`,
:mod:`crosstune.tasks.regression`), each a :class:`~crosstune.tasks.base.Task` in the ``TASKS`` registry
(:mod:`crosstune.tasks.registry`): how labels are read, validated and encoded, the model's output, losses,
metrics and the headline, baselines, the closed-form probe, predictions, figures and the Hugging Face export.
Code outside this folder asks the task; it never branches on the task's name. ``docs/adding-a-task.md`` says
what a new task provides.

Nothing heavy is imported here: import the module you need.
"""
