"""Errors a user can act on."""


class CdpError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits 2."""


class NotEnoughData(CdpError):
    """Too little data to train a model: a weekly refresh skips that model's step instead of failing."""
