"""distillir: train neural retrievers without relevance labels, by distillation.

The top-level import stays light (no torch); import submodules for the parts you need.
"""

__version__ = "0.1.0"
