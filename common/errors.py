"""Errors every layer raises."""


class BadInput(Exception):
    """The item's input is unusable (truncated, missing keys, NaN, ...): quarantine it with this reason."""
