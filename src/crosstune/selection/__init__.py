"""Choosing a backbone: transferability scores (scores.py), candidates' features (candidates.py, feature_store.py) and the domain gap (domain_gap.py).

Nothing heavy is imported here: import the module you need.
"""
