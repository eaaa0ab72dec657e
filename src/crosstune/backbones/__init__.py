"""Pretrained encoders in one registry across modalities (registry.py: each entry declares what it reads): text
(Hugging Face encoders, text.py), image (EfficientNet-Lite, torchvision and small CNNs, vision.py) and audio
(Whisper's and GE2E's encoders, Silero VAD, audio.py) backbones, each with its blocks for freezing and its
preprocessing; the zoo's catalogue of licences and sources (zoo.py).

Nothing heavy is imported here: import the module you need.
"""
