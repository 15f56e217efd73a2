"""The errors the data side raises for bad input (defined with the rest of the family in fpn.errors)."""

from fpn.errors import DatasetError, TooManyBadSamplesError

__all__ = ["DatasetError", "TooManyBadSamplesError"]
