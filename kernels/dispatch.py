"""Entry point of backend="triton" (bss2_backend.dynamics._run): checks what the kernels rely on,
then runs the fused CUBA-LIF op. Only static properties are checked here (shapes, devices, dtypes),
so the call traces under torch.compile(fullgraph=True); value checks live in dynamics._validate."""
import torch

from bss2_backend.parameters import LIFParams
from bss2_backend.readout import ReadoutParams
from bss2_backend.surrogates import Surrogate

from . import utils
from .cuba_lif import fused_cuba_lif


def _check_device(device):
    if device.type == "cuda" or (device.type == "cpu" and utils.interpreting()):
        return
    raise ValueError(f"the Triton kernels need CUDA tensors (got device {device}), or "
                     f"TRITON_INTERPRET=1 set before bss2_backend.kernels is imported to run the "
                     f"Triton interpreter on the CPU; use backend='torch' for the CPU path")


def _check_input(name, x, shape, device, dtype):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but x_exc on {device}; move both to one device")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but x_exc {dtype}; use one dtype for both")


def _check_params(name, params, n, device):
    if not isinstance(params, LIFParams):
        raise TypeError(f"{name} must be a bss2_backend.LIFParams, got {type(params).__name__}")
    for field, t in zip(params._fields, params):
        where = f"{name}.{field}"
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{where} must be a tensor of shape ({n},), got {got}")
        if t.device != device:
            raise ValueError(f"{where} is on {t.device} but the inputs on {device}; move the "
                             f"parameters with params.to(device)")
        integral = field == "ref_steps"
        if integral == t.is_floating_point():
            want = "an integer" if integral else "a floating-point"
            raise TypeError(f"{where} must have {want} dtype, got {t.dtype}")


def run_lif(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed,
            surrogate, spiking):
    """Fused chip CUBA-LIF (spiking=True) or LI readout (spiking=False): (spikes, membrane)
    [T, B, N] in the input dtype, differentiable with the in-the-loop rule. Arguments as in
    bss2_backend.cuba_lif; state runs in float32 (float64 for float64 inputs)."""
    if not isinstance(x_exc, torch.Tensor) or x_exc.dim() != 3:
        got = tuple(x_exc.shape) if isinstance(x_exc, torch.Tensor) else type(x_exc).__name__
        raise ValueError(f"x_exc must be a [T, B, N] tensor, got {got}")
    T, B, N = x_exc.shape
    if T == 0 or B == 0 or N == 0:
        raise ValueError(f"x_exc must have T, B, N >= 1, got shape {tuple(x_exc.shape)}")
    device = x_exc.device
    _check_device(device)
    _check_input("x_exc", x_exc, (T, B, N), device, None)
    if x_inh is not None:
        _check_input("x_inh", x_inh, (T, B, N), device, x_exc.dtype)
    _check_params("params", params, N, device)
    _check_params("nominal", nominal, N, device)
    if not isinstance(readout, ReadoutParams):
        raise TypeError(f"readout must be a bss2_backend.ReadoutParams, got {type(readout).__name__}")
    _check_input("readout.offset_lsb", readout.offset_lsb, (N,), device, None)
    if recurrence is not None:
        for field in ("weight", "exc", "inh"):
            _check_input(f"recurrence.{field}", getattr(recurrence, field), (N, N), device, None)
    if not isinstance(surrogate, Surrogate):
        raise TypeError(f"surrogate must be a bss2_backend.Surrogate, got {type(surrogate).__name__}")
    if membrane_noise_lsb < 0:
        raise ValueError(f"membrane_noise_lsb={membrane_noise_lsb} must be >= 0")
    return fused_cuba_lif(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb,
                          seed, surrogate.kind, surrogate.alpha, spiking)
