"""The fine-tuning loop and its parts: objective, optimisers and schedules, losses, checkpoints, data-parallel runs and source/target batch streams.

Nothing heavy is imported here: import the module you need.
"""
