"""The transfer model (backbone + pooling + head), built, saved and loaded as config.json + model.safetensors.

Nothing heavy is imported here: import the module you need.
"""
