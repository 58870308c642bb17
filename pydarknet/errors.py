"""Typed errors raised by pydarknet.

Every problem with user input (a cfg, a weights file, an image, a label) is reported as one of these, naming
the file and, where there is one, the line. Library code never exits the process.
"""


class DarknetError(Exception):
    """Base class of every error pydarknet raises on purpose."""


class CfgError(DarknetError, ValueError):
    """A malformed or unsupported `.cfg` file."""

    def __init__(self, problem, path=None, line=None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.line = line
        where = self.path or "<cfg>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {problem}")


class WeightsError(DarknetError, ValueError):
    """A `.weights` file that does not fit the network it is loaded into."""

    def __init__(self, problem, path=None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path or '<weights>'}: {problem}")


class CudaError(DarknetError, RuntimeError):
    """A CUDA runtime call or kernel launch that failed (the message names the call and CUDA's error)."""


class CfgWarning(UserWarning):
    """Something Darknet would accept with a warning (lenient mode only)."""
