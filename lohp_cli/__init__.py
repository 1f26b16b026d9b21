"""lohp: an open implementation of Lo-Hp (hybrid-policy sub-trajectory balance)."""

__version__ = "0.1.0"
