"""One small exception hierarchy: the CLI turns any of these into one line and exit code 2.

Each subsystem raises its own type, so a caller can catch what it can handle (the node turns a
`CaptureError` into "capture off", a `NodeConfigError` into a refused parameter set) and every
other layer still sees a `TlPerceptionError`.
"""


class TlPerceptionError(Exception):
    """Base of every error a user can cause with bad input."""


class ImageDecodeError(TlPerceptionError):
    """A ROS image message could not be turned into pixels."""


class BundleError(TlPerceptionError):
    """A model bundle is missing, incomplete, corrupt or of an unknown version."""


class DatasetError(TlPerceptionError):
    """A dataset directory or image tree cannot be used."""


class DirectoryLockError(DatasetError):
    """A dataset directory another capture or label run holds, or one that cannot be locked."""


class BagError(TlPerceptionError):
    """A bag cannot be read, or lacks what was asked of it."""


class TrainingError(TlPerceptionError):
    """Training options or backbones that cannot work together."""


class CaptureError(TlPerceptionError):
    """A capture that cannot start: bad settings, or a directory that is not ours to write."""


class NodeConfigError(TlPerceptionError):
    """A node parameter holds a value the node cannot work with."""


class RoiConfigError(NodeConfigError):
    """A `rois` parameter value that does not describe boxes."""


def one_line(err: object, limit: int = 600) -> str:
    """An error (or any text) as one line of at most `limit` characters.

    Errors raised by Keras, TensorFlow or LiteRT span many lines and may dump a whole model
    config; a user-facing message (a CLI line, a log line, a `ros2 param set` reason, a
    /diagnostics value) must stay one readable line.
    """
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
