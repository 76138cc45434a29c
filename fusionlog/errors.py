"""Exception hierarchy: one base class so the CLI can turn any expected failure into one line and exit 2."""


class FusionLogError(Exception):
    """Base of every error FusionLog raises on purpose (bad input, bad config, missing weights)."""


class ConfigError(FusionLogError, ValueError):
    """A setting is out of range or unknown; the message names the field, the value and what is allowed."""


class DataError(FusionLogError):
    """An input as a whole is unusable (missing/empty file, nothing parsable); single bad lines are counted instead."""


class ArtifactError(FusionLogError):
    """A saved artifact is missing a file, has a bad format version, or would need pickle to load."""


class LLMError(FusionLogError):
    """An LLM backend cannot be reached or its weights cannot be found at start-up."""


class NotFittedError(FusionLogError, RuntimeError):
    """A method that needs learned state was called before `fit`."""
