"""New task heads and token poolings: a torch-free registry (registry.py) and the torch modules beside it (modules.py).

Nothing heavy is imported here: import the module you need.
"""
