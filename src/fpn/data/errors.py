"""The one error type the data side raises for bad input."""


class DatasetError(ValueError):
    """A dataset file or image is missing or malformed; the message names the file."""
