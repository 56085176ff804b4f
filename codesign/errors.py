"""Errors the CLI turns into one clear line and an exit code (2: usage, 1: everything else)."""


class CodesignError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 1


class UsageError(CodesignError):
    """The command line itself is wrong (missing argument, malformed option value)."""

    exit_code = 2


class HardwareError(CodesignError):
    """An accelerator description is invalid or cannot hold the workload."""


class ModelError(CodesignError):
    """An ONNX model cannot be read, imported or quantized."""


class DeployError(CodesignError):
    """A compiled module is missing, corrupt, or used with the wrong inputs or hardware."""


class Interrupted(CodesignError):
    """The command was stopped by SIGTERM or SIGINT after removing what it had half-written."""
