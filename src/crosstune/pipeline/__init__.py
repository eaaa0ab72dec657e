"""One module per pipeline stage, each called by its `stages/<stage>.py` script.

Each stage's logic lives in its own module (``crosstune.pipeline.evaluate`` for evaluate, ...), and this
``__init__`` imports none of them, so a stage imports only its own module and dvc.yaml can make each stage
depend on exactly the code it runs (``tests/test_dependencies.py`` proves it). Each function loads only its
own params sections, validates everything before writing, and writes its outputs atomically, so a failed
stage leaves earlier outputs as they were.
"""
