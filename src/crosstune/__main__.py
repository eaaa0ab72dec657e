"""``python -m crosstune ...``"""

from crosstune.cli import entry_point

entry_point()
