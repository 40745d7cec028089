"""Errors a user can cause. The CLI turns each into one line and a non-zero exit."""


class CnnfeatError(Exception):
    """Base class: the message is meant for the user, as is."""


class DataError(CnnfeatError):
    """The image folder or list is missing, empty or malformed."""


class BackboneError(CnnfeatError):
    """Unknown backbone, or weights that cannot be had."""


class StoreError(CnnfeatError):
    """A feature file that is missing, incomplete, foreign or locked."""
