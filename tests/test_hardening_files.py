"""Output files under faults: a write interrupted or failing half way leaves the previous file as it
was and no temporary file behind, and says so in one line; the benchmark writes where a user
expects it."""
import errno
from pathlib import Path

import pytest
import torch

from bss2_backend.files import OutputError, check_output_file, prepare_out, save_figure, \
    save_torch, write_text


def _no_temporaries(folder):
    return not [p for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_inside_a_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_torch({"epoch": 1}, path)
    before = path.read_bytes()

    def interrupted(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"epoch": 2}, path)
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_torchs_failed_write_becomes_an_output_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_torch({"epoch": 1}, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8512 vs 8406")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError) as info:
        save_torch({"epoch": 2}, path)
    message = str(info.value)
    assert str(path) in message and "full disk" in message and "inline_container" not in message
    assert "MiB free" in message and "unchanged" in message
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_a_full_disk_for_text_and_figures_is_an_output_error(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_text(path, "{}")

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OutputError, match="No space left on device; .* MiB free"):
        write_text(path, '{"a": 1}')
    assert path.read_text() == "{}" and _no_temporaries(tmp_path)

    class Figure:
        def savefig(self, *a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(OutputError, match="Read-only file system"):
        save_figure(Figure(), tmp_path / "curves.png")
    assert _no_temporaries(tmp_path)


def _a_file(folder, *below):
    (folder / "f").write_text("x")
    return folder.joinpath("f", *below)


@pytest.mark.parametrize("make, flag_message", [
    (lambda d: "", "an empty path is not a folder"),
    (lambda d: _a_file(d), "is a file, not a folder"),
    (lambda d: _a_file(d, "sub"), "cannot write there"),
])
def test_prepare_out_refuses_what_cannot_be_a_folder(tmp_path, make, flag_message):
    with pytest.raises(OutputError, match=flag_message):
        prepare_out(make(tmp_path))


@pytest.mark.parametrize("name, message", [
    ("", "empty path"), (".", "is a folder"), ("x.txt", "not supported"), ("x", "not supported"),
    ("absent/x.png", "does not exist"),
])
def test_output_files_are_checked_before_any_work(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=message):
        check_output_file(name, "--plot", (".png", ".pdf"))
    assert check_output_file("fine.PNG", "--plot", (".png",)).name == "fine.PNG"


def test_bench_writes_to_the_checkout_or_the_working_directory(tmp_path, monkeypatch):
    from bss2_backend.bench import results
    assert results.default_out_dir() == results.RESULTS_DIR           # a source checkout
    fake = tmp_path / "site-packages" / "bss2_backend" / "bench" / "results.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(results, "__file__", str(fake))
    monkeypatch.chdir(tmp_path)
    assert results.default_out_dir() == tmp_path                      # an installed package
    (tmp_path / results.CSV_NAME).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has columns"):
        results.prepare(tmp_path)
