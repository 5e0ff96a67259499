"""Errors the jobs report as one clear line (no stack trace)."""


class PipelineError(Exception):
    """A problem with the input, the configuration or the environment that the user must fix.

    Jobs catch it in :func:`srgnn.core.cli.run_job` and print ``error: <message>`` on one line.
    The message names the file, column, table or count at fault.
    """


class ConfigError(PipelineError):
    """An option or configuration file is wrong."""


class InputError(PipelineError):
    """An input path is missing or empty, or its columns are not what the format expects."""


class EnvironmentProblem(PipelineError):
    """Java missing or too old, Delta jars missing, ..."""
