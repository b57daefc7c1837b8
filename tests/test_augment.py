"""Random image shifts in training (--augment): a true translation, reproducible per batch, resumed
runs see the same images, and bad values are refused."""
import pytest
import torch

from bss2_backend.cli import main
from bss2_backend.train.augment import batch_generator, shift_images

TINY = ["--limit-train", "96", "--limit-test", "48", "--steps", "20", "--batch-size", "32",
        "--no-progress", "--device", "cpu"]


def test_each_image_is_translated_with_a_zero_border():
    x = torch.rand(64, 16, 16) + 0.5                   # no zeros inside
    y = shift_images(x, 2, batch_generator(3, 1, 4))
    assert y.shape == x.shape
    seen = set()
    for img, out in zip(x, y):
        # find the translation that explains the output: exactly one (dy, dx) in [-2, 2]^2
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros(16, 16)
                ref[max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)] = \
                    img[max(0, dy):16 + min(0, dy), max(0, dx):16 + min(0, dx)]
                if torch.equal(ref, out):
                    found.append((dy, dx))
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 10                              # shifts differ between images
    assert torch.equal(shift_images(x, 0, batch_generator(3, 1, 4)), x)


def test_shifts_depend_on_seed_epoch_and_batch_only():
    x = torch.rand(32, 16, 16)
    a = shift_images(x, 1, batch_generator(0, 2, 5))
    assert torch.equal(a, shift_images(x, 1, batch_generator(0, 2, 5)))
    for other in (batch_generator(1, 2, 5), batch_generator(0, 3, 5), batch_generator(0, 2, 6)):
        assert not torch.equal(a, shift_images(x, 1, other))


def test_augmented_training_resumes_exactly_and_differs_from_plain(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = lambda name, *extra: main(["train", "--out", str(tmp_path / name), *TINY,
                                         "--augment", "1", *extra])
        assert run("straight", "--epochs", "2") == 0
        assert run("split", "--epochs", "1") == 0
        assert run("split", "--epochs", "2", "--resume") == 0
        assert main(["train", "--out", str(tmp_path / "plain"), *TINY, "--epochs", "2"]) == 0
    finally:
        torch.set_num_threads(before)
    load = lambda name: torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
    a, b, plain = load("straight"), load("split"), load("plain")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    # a checkpoint trained with shifts is not resumed without them
    assert main(["train", "--out", str(tmp_path / "split"), *TINY, "--epochs", "3",
                 "--resume"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--augment", "5"], "argument --augment: 5 is out of range"),
    (["--augment", "-1"], "argument --augment: -1 is out of range"),
    (["--augment", "1", "--task", "fsdd", "--data", "."], "--augment shifts images"),
])
def test_bad_augment_is_refused(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
