"""Target and source data: reading and validating tables and image folders, the prepared splits, encoding them for a backbone, and batching.

Nothing heavy is imported here: import the module you need.
"""
