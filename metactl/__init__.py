"""metactl: meta-learning turned into deployable models.

Importing this package must stay cheap: it never imports torch.
"""

__version__ = "0.1.0"
