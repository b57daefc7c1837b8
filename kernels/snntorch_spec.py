"""Static configuration of the snntorch neuron op: what the kernels take as compile-time flags."""
from typing import NamedTuple

RESET_SUB, RESET_ZERO, RESET_NONE = 0, 1, 2          # snntorch's reset_mechanism_val
REC_NONE, REC_EXTERNAL, REC_ONE_TO_ONE, REC_DENSE = 0, 1, 2, 3
SURROGATE_NONE, SURROGATE_ATAN, SURROGATE_FAST_SIGMOID, SURROGATE_SIGMOID, SURROGATE_STE, \
    SURROGATE_TRIANGULAR = 0, 1, 2, 3, 4, 5
SURROGATE_IDS = {"atan": SURROGATE_ATAN, "fast_sigmoid": SURROGATE_FAST_SIGMOID,
                 "sigmoid": SURROGATE_SIGMOID, "straight_through_estimator": SURROGATE_STE,
                 "triangular": SURROGATE_TRIANGULAR}


class NeuronSpec(NamedTuple):
    """synaptic: Synaptic/RSynaptic (a current state) or Leaky/RLeaky/Lapicque.
    rec: REC_* (external: a recurrent input per step given by the caller; one_to_one: spikes * V;
    dense: F.linear(spikes, W, bias) over the last dimension).
    reset: the update's reset (RESET_*); zero_before_decay: Leaky's zero reset, b((1-R)U) + x.
    delay: reset_delay; late_reset: reset_mechanism_val used by reset_delay=False.
    surrogate, surrogate_param: SURROGATE_* and its alpha / slope / threshold."""
    synaptic: bool = False
    rec: int = REC_NONE
    reset: int = RESET_SUB
    zero_before_decay: bool = False
    delay: bool = True
    late_reset: int = RESET_SUB
    surrogate: int = SURROGATE_ATAN
    surrogate_param: float = 2.0
