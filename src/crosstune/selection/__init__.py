"""Choosing a backbone by numbers: transferability scores (scores.py), every candidate's frozen features kept in
a feature store on disk and scored (candidates.py), and the domain gap to a source domain (domain_gap.py).

Nothing heavy is imported here: import the module you need.
"""
