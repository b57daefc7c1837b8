"""Real spoken digits for the recurrent network (the paper's Fig. 5 experiment, SHD replaced):
the Free Spoken Digit Dataset, wav files -> spikes in 70 channels through a cochlea-like front end.

A folder holds `{digit}_{speaker}_{index}.wav` (8 kHz, mono, 16-bit PCM; FSDD: 3000 recordings,
10 digits, 6 speakers, index 0..49); indices 0..4 of every digit and speaker are the test split,
as FSDD's own convention. Nothing is shipped: the user passes the folder.

Front end (torch, `spikes_of`), standing in for SHD's 700-channel cochlea model reduced to 70:
1. a recording is centred in a window of WINDOW_S seconds (cropped or zero-padded);
2. a short-time Fourier transform (25 ms frames, hops of WINDOW_S / steps: one frame per time
   step) and CHANNELS triangular mel-spaced bands from 100 Hz to 3.8 kHz: a filterbank like the
   cochlea's, dense at low frequencies;
3. half-wave energies compressed logarithmically (log(1 + E / E_ref)) and normalised by the
   recording's loudest band, so quiet and loud speakers drive the network alike;
4. spikes: per channel an integrate-and-fire encoder (the compressed intensity, scaled by
   GAIN, accumulates; a spike when it reaches 1, which it then loses): a loud band fires up to one
   spike per step, a silent one never. Spike counts [steps, 70] in {0, 1}, like SHD's binned counts.

Every problem with a file is a DataError naming it: not a wav, empty, another rate than 8 kHz,
stereo, a name that does not follow the pattern, a digit outside 0..9.
"""
import math
import re
import wave
from pathlib import Path

import torch

from .data import DataError, Dataset

RATE = 8000
CHANNELS = 70
CLASSES = 10
TEST_INDICES = range(5)
WINDOW_S = 1.0
FRAME_S = 0.025
F_MIN, F_MAX = 100.0, 3800.0
GAIN = 0.6
NAME = re.compile(r"^(?P<digit>\d+)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")


def read_wav(path):
    """A mono 16-bit 8 kHz wav -> float32 samples in [-1, 1]; DataError naming the file."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (w.getnchannels(), w.getsampwidth(),
                                             w.getframerate(), w.getnframes())
            data = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise DataError(f"{path}: not a readable wav file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if channels != 1:
        raise DataError(f"{path}: {channels} channels; FSDD recordings are mono")
    if rate != RATE:
        raise DataError(f"{path}: sampled at {rate} Hz; the front end expects {RATE} Hz")
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples; expected 16-bit PCM")
    if frames == 0 or len(data) < 2:
        raise DataError(f"{path}: holds no samples")
    return torch.frombuffer(bytearray(data[:2 * (len(data) // 2)]), dtype=torch.int16).float() / 32768


def _mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_fft, channels=CHANNELS, rate=RATE, f_min=F_MIN, f_max=F_MAX):
    """[channels, n_fft // 2 + 1] triangular filters equally spaced on the mel scale."""
    mels = torch.linspace(_mel(f_min), _mel(f_max), channels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).float()


def _window(samples):
    """A recording centred in WINDOW_S seconds: cropped or zero-padded."""
    window = int(WINDOW_S * RATE)
    if samples.numel() >= window:
        start = (samples.numel() - window) // 2
        return samples[start:start + window]
    pad = window - samples.numel()
    return torch.nn.functional.pad(samples, (pad // 2, pad - pad // 2))


def spikes_of(samples, steps, channels=CHANNELS):
    """Recordings -> spikes in {0, 1}: one (float [n]) -> [steps, channels], or a list of them
    -> [N, steps, channels] (module docstring)."""
    single = isinstance(samples, torch.Tensor)
    x = torch.stack([_window(s) for s in ([samples] if single else samples)])
    window = x.shape[1]
    hop = window // steps
    n_fft, frame = 256, int(FRAME_S * RATE)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=frame,
                      window=torch.hann_window(frame), center=True, return_complex=True)
    power = spec.abs() ** 2                                        # [N, freqs, frames]
    energy = (mel_filterbank(n_fft, channels) @ power)[..., :steps]
    energy = energy.transpose(1, 2)                                # [N, steps, channels]
    compressed = torch.log1p(energy / 1e-4)
    level = compressed / compressed.amax((1, 2), keepdim=True).clamp_min(1e-6)
    # integrate-and-fire per channel (drive <= 1 per step, subtract on a spike): a spike exactly
    # where the accumulated drive passes an integer
    total = torch.cumsum(GAIN * level.double(), 1)
    spikes = (torch.floor(total) > torch.floor(total - GAIN * level.double())).float()
    return spikes[0] if single else spikes


def parse_name(path):
    """(digit, speaker, index) of an FSDD file name; DataError naming the file otherwise."""
    m = NAME.match(Path(path).name)
    if m is None:
        raise DataError(f"{path}: not an FSDD name {{digit}}_{{speaker}}_{{index}}.wav")
    digit = int(m["digit"])
    if not 0 <= digit < CLASSES:
        raise DataError(f"{path}: digit {digit} is outside 0..{CLASSES - 1}")
    return digit, m["speaker"], int(m["index"])


def load_fsdd(folder, steps=100, limit=None):
    """The FSDD folder -> (Dataset "fsdd" of spikes [N, steps, 70], test speakers [N_test]).
    Files whose names do not follow the pattern are refused by name; limit: the first `limit`
    files (sorted), for small runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (pass the FSDD recordings folder with --data)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav")
    if not files:
        raise DataError(f"{folder}: no .wav files (FSDD recordings are {{digit}}_{{speaker}}_"
                        f"{{index}}.wav)")
    if limit is not None:
        files = files[:limit]
    split = {"train": ([], [], []), "test": ([], [], [])}
    for path in files:
        digit, speaker, index = parse_name(path)
        part = split["test" if index in TEST_INDICES else "train"]
        part[0].append(read_wav(path))
        part[1].append(digit)
        part[2].append(speaker)
    for name, (xs, _, _) in split.items():
        if not xs:
            raise DataError(f"{folder}: no {name} recordings (index {'0..4' if name == 'test' else '5..'}"
                            f" of FSDD's names)")
    stack = lambda part: (spikes_of(part[0], steps), torch.tensor(part[1], dtype=torch.int64))
    (x_tr, y_tr), (x_te, y_te) = stack(split["train"]), stack(split["test"])
    return Dataset("fsdd", x_tr, y_tr, x_te, y_te, CLASSES), split["test"][2]


def test_speakers(folder, limit=None):
    """The speakers of the test split, in load_fsdd's order (names only: nothing is read)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".wav")
    files = files if limit is None else files[:limit]
    return [parse_name(p)[1] for p in files if parse_name(p)[2] in TEST_INDICES]
