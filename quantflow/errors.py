"""Errors a user can cause and fix: one clear message, no deep traceback."""


class QuantflowError(Exception):
    """A problem with the user's input (config, files, data) and how to fix it."""
