"""A process-wide choice that a call sets and a `with` block scopes (the CPU loop, the synaptic
product path, the recurrent strategy): one mechanism instead of one per setting."""


class ScopedChoice:
    """`Sub(mode)` sets the choice; `with Sub(mode): ...` restores the previous one on exit.
    Subclasses name `choices`, `label` (for the error) and `current`, the one-element list the
    module reads the value from."""
    choices = ()
    label = "choice"
    current = None

    def __init__(self, mode):
        self.check(mode)
        self.previous = self.current[0]
        self.current[0] = mode

    @classmethod
    def check(cls, mode):
        if mode not in cls.choices:
            raise ValueError(f"{cls.label} must be one of {cls.choices}, got {mode!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.current[0] = self.previous
        return False
