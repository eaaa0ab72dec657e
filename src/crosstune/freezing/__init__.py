"""Which parameters train: freeze policies by depth and pattern, gradual unfreezing and LoRA adapters.

Nothing heavy is imported here: import the module you need.
"""
