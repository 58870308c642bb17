"""Typed errors raised by pydarknet.

Every problem with user input (a cfg, a weights file, an image, a label) is reported as one of these, naming
the file and, where there is one, the line. Library code never exits the process.
"""

__all__ = [
    "DarknetError",
    "CfgError",
    "WeightsError",
    "CudaError",
    "UsageError",
    "DataError",
    "ImageError",
    "AnnotationError",
    "ModelError",
    "AssetError",
    "AssetUnavailable",
    "DeviceError",
    "TruthError",
    "TrainingError",
    "DistributedError",
    "LaunchError",
    "CheckpointError",
    "AnchorsError",
    "ConcurrentUseError",
    "NonFiniteError",
    "WriteError",
    "ExportError",
    "VideoError",
    "CfgWarning",
]


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

    def __init__(self, problem, path=None, *, too_short=False):
        self.problem = problem
        self.path = str(path) if path is not None else None
        # fewer floats than the cfg needs: a truncated file or a backbone prefix; the Python API's way to load the
        # latter is partial=True (the command line says its own equivalent, see pydarknet.cli.common)
        self.too_short = too_short
        hint = "; a backbone prefix such as yolov4-tiny.conv.29 loads with partial=True" if too_short else ""
        super().__init__(f"{self.path or '<weights>'}: {problem}{hint}")


class CudaError(DarknetError, RuntimeError):
    """A CUDA runtime call or kernel launch that failed (the message names the call and CUDA's error)."""


class UsageError(DarknetError, ValueError):
    """A problem with the command line or the model files (exit code 2)."""


class DataError(DarknetError, ValueError):
    """A bad dataset description: a ``.data`` or ``data.yaml`` file, a list, a names file or a label file."""


class ImageError(DarknetError, ValueError):
    """An image that cannot be read or decoded (names the file and the reason)."""


class AnnotationError(DarknetError, ValueError):
    """A COCO annotation file that cannot be read or does not fit the classes or the images."""


class ModelError(DarknetError, ValueError):
    """An unknown model name, or weights that are missing and cannot be fetched."""


class AssetError(DarknetError, RuntimeError):
    """An asset could not be provided (download failure, bad checksum, unknown name...)."""


class AssetUnavailable(AssetError):
    """No source could be reached: the registry and the upstream URL both failed to deliver.

    Raised for network-level problems (registry unreachable, package missing from the
    index, pip failing) as opposed to integrity problems (wrong size or checksum), which
    raise plain :class:`AssetError`.
    """


class DeviceError(DarknetError, ValueError):
    """A device that this build or this machine cannot run on."""


class TruthError(DarknetError, ValueError):
    """A truth box that Darknet's training could not use (names the image and the row)."""

    def __init__(self, problem, image=None, row=None):
        self.problem = problem
        self.image = image
        self.row = row
        where = "truths"
        if image is not None:
            where = f"truths[{image}]"
            if row is not None:
                where = f"{where} row {row}"
        super().__init__(f"{where}: {problem}")


class TrainingError(DarknetError, RuntimeError):
    """Training cannot go on (repeated non-finite losses, an unusable dataset, ...)."""


class DistributedError(TrainingError):
    """Data-parallel training cannot go on: a rank died or hung (the message names it), the ranks disagree on
    the cfg, weights or data, or the MPI set-up is missing."""

    def __init__(self, problem, rank=None):
        self.problem = problem
        self.rank = rank
        super().__init__(problem)


class LaunchError(DistributedError):
    """``pydarknet train --gpus`` cannot start its ranks: mpi4py or ``mpirun`` is missing, or this process is
    already one of several started by a launcher."""


class CheckpointError(DarknetError, ValueError):
    """A training-state file that is damaged or does not belong to the network or weights it is used with."""

    def __init__(self, problem, path=None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class AnchorsError(DarknetError, ValueError):
    """Labels or arguments calc_anchors cannot work with."""


class ConcurrentUseError(DarknetError, RuntimeError):
    """A network used from several threads in a way that cannot be correct: a training sequence (forward_train,
    then backward) broken by another thread's forward_train on the same network."""


class NonFiniteError(DarknetError, ArithmeticError):
    """A forward pass produced NaN or infinity (names the first layer that did, and its cfg line)."""


class WriteError(DarknetError, OSError):
    """A file could not be written (a full disk, no permission...): names the file and the reason.

    Also an OSError (with ``errno``, ``strerror`` and ``filename``), so code that catches OSError still sees it."""

    def __init__(self, path, exc: OSError):
        self.path = str(path)
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno == 28:  # ENOSPC
            reason += " (the disk is full)"
        super().__init__(exc.errno, reason, self.path)
        self.message = f"cannot write {self.path}: {reason}"

    def __str__(self):
        return self.message

    def __reduce__(self):
        # OSError's own pickling would call __init__ with (errno, strerror, filename); worker processes pickle errors.
        return (_rebuild_write_error, (self.path, self.errno, self.strerror, self.message))


def _rebuild_write_error(path, errno, strerror, message):
    err = WriteError(path, OSError(errno, strerror))
    err.message = message
    return err


class ExportError(DarknetError, ValueError):
    """A network, or an export option, that cannot be written in the asked format (names the layer and cfg line)."""


class VideoError(DarknetError, RuntimeError):
    """A video file or stream that cannot be opened, decoded or written (names the source and, where there is
    one, the frame)."""

    def __init__(self, problem, source=None, frame=None):
        self.problem = problem
        self.source = None if source is None else str(source)
        self.frame = frame
        where = self.source or "<video>"
        if frame is not None:
            where = f"{where}: frame {frame}"
        super().__init__(f"{where}: {problem}")


class CfgWarning(UserWarning):
    """Something Darknet would accept with a warning (lenient mode only)."""
