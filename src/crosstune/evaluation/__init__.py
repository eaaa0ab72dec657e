"""Test metrics, baselines and the negative-transfer guard's verdict.

Nothing heavy is imported here: import the module you need.
"""
