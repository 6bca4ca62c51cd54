"""The one exception type for unusable checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint could not be found, read or matched to the model.

    The message names the file (or hub id) and the tensors concerned and says what to do.
    """
