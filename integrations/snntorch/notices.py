"""One-time notices: why the backend runs something on a slower path, said once per reason."""
import warnings

_SEEN = set()


class BackendNotice(UserWarning):
    """The backend fell back to a slower path (snntorch's own code or per-step execution)."""


def notice_once(key, message):
    if key in _SEEN:
        return
    _SEEN.add(key)
    warnings.warn(message, BackendNotice, stacklevel=3)


def forget():
    """Say every notice again (tests)."""
    _SEEN.clear()
