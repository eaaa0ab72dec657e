"""The frozen-prefix cache: when the bottom of the model is frozen, its outputs are computed once per split (plan.py decides, torch-free; store.py builds, saves and serves them).

Nothing heavy is imported here: import the module you need.
"""
