"""The one error type of plans derivation."""


class PlansError(ValueError):
    """Plans that cannot be derived as asked; the message says which file, configuration or value and what to do."""
