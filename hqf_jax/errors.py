"""User-facing errors: each message names the fix. Entry points print them on one line."""


class HqfError(Exception):
    """A mistake in input or configuration that the user can fix; never shown as a traceback."""


class ConfigError(HqfError):
    pass


class DataError(HqfError):
    pass


class CheckpointError(HqfError):
    pass


class RunLockError(HqfError):
    """Another process writes the same run folder."""


class NonFiniteError(HqfError):
    """The loss or the state became NaN/inf; the run stopped before saving it."""
