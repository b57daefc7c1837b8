"""One way to define every fused op: a forward and a hand-written backward, registered once.

An op is two plain functions of (config, implementation, *tensors): `forward` returns the op's
outputs, `backward` the gradients from the saved tensors and the output cotangents. `FusedOp`
registers them as the torch.library custom ops bss2::<name>_fwd and bss2::<name>_bwd (with fake
implementations, so torch.compile traces them, and register_autograd), and builds from the same
two functions an eager autograd.Function that skips the dispatcher: outside torch.compile the
custom-op machinery cost more host time per call than the kernels take at the chip's sizes
(~0.4 ms per backward measured on an H100 host). Calling the op picks the custom ops while
torch.compile traces and the eager Function otherwise; both run the same forward and backward.

The config is a NamedTuple of bool/int/float fields; in the op schema it is flattened to one
int[] and one float[] and rebuilt inside, so a custom op never has a dozen positional scalars.
"""
import torch


def refuse_double_backward(op):
    """The hand-written backward of every op here is first order (the in-the-loop rule is a
    surrogate): there is no gradient of the gradient. Called inside backward, where grad mode is on
    only for create_graph=True."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: double backward (create_graph=True, higher-order gradients) is "
                           f"not supported: the op's backward is a first-order surrogate; call "
                           f"backward() / torch.autograd.grad without create_graph=True")


def flatten(config):
    """NamedTuple of bool/int/float -> (ints, floats), in field order."""
    ints, floats = [], []
    for value in config:
        if isinstance(value, float):
            floats.append(value)
        else:
            ints.append(int(value))
    return ints, floats


def unflatten(config_type, ints, floats):
    """Inverse of flatten: the field types come from the NamedTuple's annotations."""
    ints, floats = iter(ints), iter(floats)
    values = []
    for name in config_type._fields:
        kind = config_type.__annotations__[name]
        values.append(float(next(floats)) if kind is float else kind(next(ints)))
    return config_type(*values)


def _no_none(fn):
    """fn with every None in its list result replaced by an empty tensor (a Tensor[] of a custom
    op holds no None); the eager path keeps the Nones and allocates nothing for them."""
    def call(config, impl, *tensors):
        like = next(t for t in tensors if t is not None)
        return [like.new_empty(0) if t is None else t for t in fn(config, impl, *tensors)]
    return call


def _tensors(names):
    return ", ".join(f"Tensor{'?' if n.endswith('?') else ''} {n.rstrip('?')}" for n in names)


class FusedOp:
    """A registered op (see the module docstring).

    Args:
        name: the op's name (bss2::<name>_fwd, bss2::<name>_bwd).
        config_type: its NamedTuple config.
        inputs / saved: names of the forward's tensor arguments / of the tensors the backward takes
            besides the output cotangents ("x?" for an optional one).
        outputs / grad_outputs: how many tensors forward returns / how many of them get a
            cotangent in backward (the first ones).
        forward(config, impl, *inputs) -> tuple of outputs; fake_forward(config, impl, *inputs)
            the same with empty tensors of the right shapes.
        backward(config, impl, *saved, *cotangents) -> list of tensors or None (in the custom op
            a None becomes an empty tensor); fake_backward likewise, with empty tensors.
        save(ctx, config, inputs, outputs) -> the saved tensors (it may set ctx attributes).
        gradients(ctx, config, results) -> the gradients of the forward's tensor inputs, from
            what backward returned.
        backward_config(ctx, config) -> the config backward runs with (default: the forward's),
            e.g. with flags for which inputs need a gradient (ctx.needs: one bool per tensor
            input, in both paths).
    """

    def __init__(self, name, config_type, *, inputs, outputs, saved, grad_outputs, forward,
                 fake_forward, backward, fake_backward, save, gradients, backward_config=None):
        self.name, self.config_type = name, config_type
        self._n_inputs, self._n_saved = len(inputs), len(saved)
        self._grad_outputs = grad_outputs
        self._forward, self._backward = forward, backward
        self._save, self._gradients = save, gradients
        self._backward_config = backward_config or (lambda ctx, config: config)
        cotangents = [f"g{i}?" for i in range(grad_outputs)]
        tail = "int[] ints, float[] floats, str impl"
        self.fwd = torch.library.custom_op(
            f"bss2::{name}_fwd", self._flat(forward, self._n_inputs), mutates_args=(),
            schema=f"({_tensors(inputs)}, {tail}) -> ({', '.join(['Tensor'] * outputs)})")
        self.fwd.register_fake(self._flat(fake_forward, self._n_inputs))
        self.bwd = torch.library.custom_op(
            f"bss2::{name}_bwd", self._flat(_no_none(backward), self._n_saved + grad_outputs),
            mutates_args=(), schema=f"({_tensors(list(saved) + cotangents)}, {tail}) -> Tensor[]")
        self.bwd.register_fake(self._flat(fake_backward, self._n_saved + grad_outputs))
        self.fwd.register_autograd(self._compiled_backward, setup_context=self._compiled_setup)
        self._eager = self._eager_function()

    def _flat(self, fn, n):
        def call(*args):
            tensors, (ints, floats, impl) = args[:n], args[n:]
            return fn(unflatten(self.config_type, ints, floats), impl, *tensors)
        return call

    def __call__(self, config, impl, *inputs):
        """Run the op: the custom op while torch.compile traces, the eager Function otherwise."""
        if torch.compiler.is_compiling():
            return self.fwd(*inputs, *flatten(config), impl)
        return self._eager.apply(config, impl, *inputs)

    # --- autograd of the custom op (torch.compile) ------------------------------------------------
    def _compiled_setup(self, ctx, inputs, output):
        tensors, (ints, floats, impl) = inputs[:self._n_inputs], inputs[self._n_inputs:]
        config = unflatten(self.config_type, ints, floats)
        ctx.config, ctx.impl = config, impl
        ctx.save_for_backward(*self._save(ctx, config, tensors, output))
        ctx.run_backward = lambda cfg, *t: self.bwd(*t, *flatten(cfg), impl)

    def _compiled_backward(self, ctx, *grads):
        return (*self._run_backward(ctx, grads), None, None, None)

    def _run_backward(self, ctx, grads):
        # which tensor inputs want a gradient (the eager Function has config and impl first)
        offset = getattr(ctx, "input_offset", 0)
        ctx.needs = ctx.needs_input_grad[offset:offset + self._n_inputs]
        config = self._backward_config(ctx, ctx.config)
        results = ctx.run_backward(config, *ctx.saved_tensors, *grads[:self._grad_outputs])
        return self._gradients(ctx, config, results)

    # --- the eager fast path: the same functions, no dispatcher -------------------------------------
    def _eager_function(self):
        op = self

        def forward(ctx, config, impl, *inputs):
            output = op._forward(config, impl, *inputs)
            ctx.config, ctx.impl, ctx.input_offset = config, impl, 2
            ctx.set_materialize_grads(False)         # an unused output costs no tensor of zeros
            ctx.save_for_backward(*op._save(ctx, config, inputs, output))
            ctx.run_backward = lambda cfg, *t: op._backward(cfg, impl, *t)
            return output

        def backward(ctx, *grads):
            refuse_double_backward(op.name)
            return (None, None, *op._run_backward(ctx, grads))

        # a named class: autograd names its graph nodes after it (<name>_eagerBackward)
        return type(f"{self.name}_eager", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})
