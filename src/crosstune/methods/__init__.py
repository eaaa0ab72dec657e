"""Transfer methods as loss modules over features: domain-adaptation losses and regularisers towards the pretrained model, with a torch-free registry (registry.py).

Nothing heavy is imported here: import the module you need.
"""
