"""Run one stage script and record what it really used: the crosstune modules it imported and the params
keys it read. Used by tests/test_dependencies.py, which checks both against the stage's dvc.yaml entry.

    python tests/helpers/stage_probe.py RECORD.json stages/X.py ARGS...
"""

from __future__ import annotations

import dataclasses
import json
import runpy
import sys

import crosstune.config as config

READ: dict[str, set[str]] = {}


def _recording(section: str, cls: type) -> type:
    """A subclass of the section's dataclass that records each field read after construction (reads by
    ``__post_init__`` validation are not uses)."""
    fields = {field.name for field in dataclasses.fields(cls)}

    def __getattribute__(self, name):  # noqa: N807 - the data model hook
        if name in fields and object.__getattribute__(self, "__dict__").get("_probe_ready"):
            READ.setdefault(section, set()).add(name)
        return object.__getattribute__(self, name)

    def __init__(self, *args, **kwargs):  # noqa: N807
        cls.__init__(self, *args, **kwargs)
        object.__setattr__(self, "_probe_ready", True)

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__init__": __init__})


def main() -> None:
    record, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    for section, cls in list(config.SECTIONS.items()):
        config.SECTIONS[section] = _recording(section, cls)
    sys.argv = [script, *args]
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code or 0
    modules = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
               if name == "crosstune" or name.startswith("crosstune.")}
    with open(record, "w", encoding="utf-8") as handle:
        json.dump({"status": status, "modules": modules,
                   "params": {section: sorted(keys) for section, keys in READ.items()}}, handle, indent=1)
    sys.exit(status)


if __name__ == "__main__":
    main()
