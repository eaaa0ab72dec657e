"""Using a trained model: batched outputs, the Predictor behind `crosstune predict` and `crosstune.load`, and export with a model card.

Nothing heavy is imported here: import the module you need.
"""
