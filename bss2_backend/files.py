"""Output files that are never half-written: every write goes to a temporary file in the same folder,
then replaces the target in one rename (os.replace is atomic on POSIX and Windows)."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class OutputError(OSError):
    """The output folder cannot be created or written."""


def prepare_out(out):
    """Create `out` (and parents) and prove it is writable; OutputError naming it otherwise."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".bss2-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"--out {out}: cannot write there ({e.strerror or e}); pass a folder you "
                          f"can write to") from None
    return out


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results should read like any file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(obj, path):
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
