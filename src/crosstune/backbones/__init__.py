"""Pretrained encoders: text (Hugging Face) and image (EfficientNet-Lite, torchvision) backbones, each with its layer list for freezing and its preprocessing.

Nothing heavy is imported here: import the module you need.
"""
