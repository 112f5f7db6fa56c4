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
