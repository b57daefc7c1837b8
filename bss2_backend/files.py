"""Output files that are never half-written: every write goes to a temporary file in the same folder,
then replaces the target in one rename (os.replace is atomic on POSIX and Windows). A write that
fails (a full disk, a file-size limit, a read-only folder, Ctrl-C) removes its temporary file and
leaves the previous version of the target as it was; the error is an OutputError naming the file."""
import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class OutputError(OSError):
    """The output folder or file cannot be created or written."""


def _reason(e):
    return e.strerror or str(e) or type(e).__name__


def prepare_out(out, flag="--out"):
    """Create `out` (and parents) and prove it is writable; OutputError naming it otherwise."""
    if not str(out).strip():
        raise OutputError(f"{flag}: an empty path is not a folder; name one (e.g. ./out)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file, not a folder; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".bss2-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"{flag} {out}: cannot write there ({_reason(e)}); pass a folder you "
                          f"can write to") from None
    return out


def check_output_file(path, flag, suffixes):
    """Refuse, before any work, an output file that could not be written: an empty name, a folder,
    a missing or unwritable parent folder, or a suffix not in `suffixes`."""
    if not str(path).strip():
        raise OutputError(f"{flag}: an empty path is not a file name")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name such as "
                          f"{path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {path}: the file type {path.suffix or '(none)'!r} is not "
                          f"supported; use one of {', '.join(suffixes)}")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: the folder {parent} is not writable")
    return path


def _failed(path, e):
    space = ""
    if getattr(e, "errno", None) in (None, errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            space = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its disk"
        except OSError:
            pass
    return OutputError(f"cannot write {path} ({_reason(e)}{space}); the previous {path.name}, if "
                       f"any, is unchanged")


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed
    (an OSError becomes an OutputError naming `path`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _failed(path, e) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results should read like any file
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise _failed(path, e) from None
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
        try:
            torch.save(obj, tmp)
        except RuntimeError:
            # torch's zip writer reports a failed write (a full disk, a size limit) as a
            # RuntimeError from inline_container.cc that names neither; it is an output error
            raise OSError("the write stopped short: a full disk or a file-size limit") from None


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
