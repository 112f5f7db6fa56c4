"""One small exception hierarchy: the CLI turns any of these into one line and exit code 2."""


class TlPerceptionError(Exception):
    """Base of every error a user can cause with bad input."""


class ImageDecodeError(TlPerceptionError):
    """A ROS image message could not be turned into pixels."""


class BundleError(TlPerceptionError):
    """A model bundle is missing, incomplete, corrupt or of an unknown version."""


class DatasetError(TlPerceptionError):
    """A dataset directory or image tree cannot be used."""


class BagError(TlPerceptionError):
    """A bag cannot be read, or lacks what was asked of it."""


class TrainingError(TlPerceptionError):
    """Training options or backbones that cannot work together."""


def one_line(err: object, limit: int = 600) -> str:
    """An error (or any text) as one line of at most `limit` characters.

    Errors raised by Keras, TensorFlow or LiteRT span many lines and may dump a whole model
    config; a user-facing message (a CLI line, a log line, a `ros2 param set` reason, a
    /diagnostics value) must stay one readable line.
    """
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
