"""The transfer model: a pretrained backbone, a pooling rule and a new head (modules.py), saved and loaded as
config.json + model.safetensors (storage.py), read back torch-free with the records stages leave beside it
(settings.py), and rebuilt from random weights for the guard (random_init.py).

Nothing heavy is imported here: import the module you need.
"""
