"""The offline HTML report and the figures people look at.

Nothing heavy is imported here: import the module you need.
"""
