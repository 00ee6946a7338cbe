"""Errors a user can act on: every CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, config or run directory (not a bug in the tool).

    The message must name the file or key and say what is wrong, in one line.
    """

    exit_code = 2


class InputError(UserError):
    """A data file that cannot be used (unreadable, wrong shape, NaN, ...)."""


class ConfigError(UserError):
    """A config file or --set override that is invalid."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe or belongs to another config."""
