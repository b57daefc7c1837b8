"""Ideal mode on the fused neuron op (in progress: every neuron runs snntorch's own code for now)."""


def unfusable_reason(module, input_, multistep=False):
    return "the fused snntorch neuron op is not wired in yet"


def step(module, input_, states):
    raise NotImplementedError


def multistep(module, x):
    raise NotImplementedError
