"""The fine-tuning loop and its parts: the loop (loop.py) with its run context (run_context.py) and callbacks
(callbacks.py), optimisers and schedules, losses, the closed-form head fit (closed_form_head.py), precision and
attention kernels, checkpoints, data-parallel runs and source/target batch streams.

Nothing heavy is imported here: import the module you need.
"""
