"""Training in the loop: epochs, evaluation, metrics, checkpoints that resume exactly, several ranks.

One epoch: the training set in a fixed order per (seed, epoch) (so a resumed run sees the same
batches), each batch encoded to spikes, run on the chip (forward), and the in-the-loop gradient
(backward) applied by Adam. Under torch.distributed (torchrun) every rank builds the same chip
(same seed) and model and takes its slice batch[rank::world] of each global batch; DDP averages
the gradients, and metrics are summed over ranks. Only rank 0 writes files and logs.
"""
import math
import sys
import time
import torch
import torch.distributed as dist

from .augment import batch_generator, shift_images
from .checkpoint import check_matches, load_checkpoint, make_checkpoint, restore
from .coding import latency_code, max_over_time_loss, spike_regulariser, sum_over_time_loss
from ..files import save_torch
from .config import SEQUENCE_TASKS, lr_at
from .model import fsdd_network, mnist_network, shd_network
from ..energy import decision_steps

def build_network(cfg, chip, n_in, n_out):
    """The task's network on `chip`, initialised from cfg.seed (the same on every rank)."""
    torch.manual_seed(cfg.seed)
    build = {"shd": shd_network, "fsdd": fsdd_network}.get(cfg.task, mnist_network)
    model = build(chip, n_in, n_out, dropout=cfg.dropout)
    if cfg.freeze_recurrent:
        recurrent = getattr(model.hidden[-1], "recurrent", None)
        if recurrent is None:
            raise ValueError(f"freeze_recurrent: the {cfg.task} network has no recurrent weights")
        recurrent.weight.requires_grad_(False)
    return model


def encode(cfg, x):
    """A batch of samples -> input spikes [T, B, features]."""
    if cfg.task in SEQUENCE_TASKS:
        return x.transpose(0, 1).float()          # spike counts [B, T, 70] -> [T, B, 70]
    return latency_code(x, cfg.steps, t_last=cfg.t_last)


def loss_and_prediction(cfg, readout, labels):
    """(loss, predictions) of readout [T, B, classes]; on a population of K chips, readout
    [K, T, B, classes]: the loss averaged over the chips, predictions [K, B]."""
    if readout.dim() == 4:
        K, T, B = readout.shape[:3]
        loss, pred = loss_and_prediction(cfg, readout.permute(1, 0, 2, 3).reshape(T, K * B, -1),
                                         labels.repeat(K))
        return loss, pred.reshape(K, B)
    if cfg.task in SEQUENCE_TASKS:
        return sum_over_time_loss(readout, labels, scale=cfg.loss_scale), readout.mean(0).argmax(1)
    return max_over_time_loss(readout, labels, scale=cfg.loss_scale), readout.max(0).values.argmax(1)


class Ranks:
    """This process's place among torch.distributed ranks (world 1 when not distributed)."""

    def __init__(self):
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    @property
    def main(self):
        return self.rank == 0

    def sum(self, values, device):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.on:
            dist.all_reduce(t)
        return t.tolist()


def batch_order(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_step(cfg, model, optimiser, totals):
    """One batch's forward, loss, backward, optimiser step and weight clamp, with its metrics
    added to `totals` (float64 [4] on the device: loss x n, correct, hidden spikes, n): tensor
    work only, no host synchronisation, so it can be captured as a CUDA graph. Returns the loss."""
    plain = _plain(model)

    def step(xb, yb):
        hidden, readout = model(encode(cfg, xb))
        loss, pred = loss_and_prediction(cfg, readout, yb)
        total = loss + spike_regulariser(hidden, cfg.reg)
        total.backward()
        optimiser.step()
        plain.clamp_to_chip_()
        n = pred.numel()                       # samples x chips on a population
        loss = loss.detach()
        totals[0].add_(loss.double() * n)
        totals[1].add_((pred == yb).sum())
        totals[2].add_(hidden.detach().sum().double())
        totals[3].add_(n)
        return loss
    return step


def eval_step(cfg, model, totals):
    """One evaluation batch's hidden spikes, time-to-decision steps and correct predictions per
    chip added to `totals` (float64 [2 + chips] on the device: spikes, decision steps, then correct
    per chip; one chip unless the model runs on a population); capturable like train_step."""
    def step(xb, yb):
        hidden, readout = model(encode(cfg, xb))
        _, pred = loss_and_prediction(cfg, readout, yb)
        totals[0].add_(hidden.sum().double())
        totals[1].add_(decision_steps(readout).sum().double())
        totals[2:].add_((pred == yb).reshape(-1, yb.shape[0]).sum(1))
    return step


def chips_of(model):
    """How many chips the model runs on (a population's size, else 1)."""
    return getattr(getattr(_plain(model), "chip", None), "size", 1)


def _graphed(fn, device, cuda_graph):
    from ..graphs import GraphedStep
    return GraphedStep(fn, device=device, enabled=cuda_graph)


def _n_hidden(model):
    return _plain(model).hidden[0].out_features


def run_epoch(cfg, model, optimiser, x, y, epoch, device, ranks, progress=True, step=None):
    """One training epoch; returns (mean loss, train accuracy, hidden spikes per neuron and sample).
    step: a (graphed) train_step over a `totals` tensor, as fit() builds it; None builds an eager
    one."""
    model.train()
    totals = step.totals if step is not None else torch.zeros(4, dtype=torch.float64,
                                                               device=device)
    if step is None:
        step = train_step(cfg, model, optimiser, totals)
    totals.zero_()
    order = batch_order(len(y), cfg.seed, epoch)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = [b for b in batches if len(b) >= ranks.world]
    bar = _progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", progress and ranks.main)
    shown = 0.0
    try:
        for number, idx in enumerate(batches):
            idx = idx[ranks.rank::ranks.world]
            xb, yb = x[idx], y[idx]
            if cfg.augment:
                xb = shift_images(xb, cfg.augment, batch_generator(cfg.seed, epoch, number))
            xb, yb = xb.to(device), yb.to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = step(xb, yb)
            if bar is not None:
                bar.update(1)
                if time.monotonic() - shown > 0.5:       # reading the loss waits for the device
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    shown = time.monotonic()
    finally:
        # also on Ctrl-C: the bar's line is cleared before anything else is said
        if bar is not None:
            bar.close()
    loss_sum, correct, spikes, n = ranks.sum(totals.tolist(), device)
    return loss_sum / n, correct / n, spikes / (n * _n_hidden(model))


@torch.no_grad()
def evaluate(cfg, model, x, y, device, ranks=None, batch_size=256, step=None, per_chip=False,
             details=False):
    """Test accuracy (and hidden spikes per neuron and sample) of `model` on x, y; on a
    population the mean over its chips, or with per_chip=True the list of the chips' accuracies.
    details=True returns a dict instead: accuracy, per_chip, spikes_per_hidden_neuron,
    spikes_per_sample, decision_steps (mean time to decision, steps).
    step: a (graphed) eval_step over a `totals` tensor, as fit() builds it; None builds one."""
    ranks = ranks or Ranks()
    model.eval()
    chips = chips_of(model)
    totals = step.totals if step is not None else torch.zeros(2 + chips, dtype=torch.float64,
                                                               device=device)
    if step is None:
        step = eval_step(cfg, model, totals)
    totals.zero_()
    mine = torch.arange(len(y))[ranks.rank::ranks.world]
    for i in range(0, len(mine), batch_size):
        idx = mine[i:i + batch_size]
        step(x[idx].to(device), y[idx].to(device))
    spikes, decisions, *correct = ranks.sum(totals.tolist(), device)
    accuracy = [c / len(y) for c in correct]
    samples = len(y) * chips
    if details:
        return {"accuracy": sum(accuracy) / chips, "per_chip": accuracy,
                "spikes_per_hidden_neuron": spikes / (samples * _n_hidden(model)),
                "spikes_per_sample": spikes / samples, "decision_steps": decisions / samples}
    spikes = spikes / (samples * _n_hidden(model))
    if per_chip:
        return accuracy, spikes
    return sum(accuracy) / chips, spikes


@torch.no_grad()
def accuracy_over_time(cfg, model, x, y, device, batch_size=256):
    """Test accuracy when the decision may use the readout of steps [0, t] only, for every t
    (Fig. 3C): a list of T accuracies (the last is the usual one)."""
    model.eval()
    correct = None
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        _, readout = model(encode(cfg, xb))
        if readout.dim() == 4:
            readout = readout[0]            # a population: its first chip
        T = readout.shape[0]
        hits = torch.stack([loss_and_prediction(cfg, readout[:t + 1], yb)[1] == yb
                            for t in range(T)]).sum(1)
        correct = hits if correct is None else correct + hits
    return (correct.double() / len(y)).tolist()


def time_to_decision(curve, dt_us, fraction=0.99):
    """The earliest time (us) from which the restricted readout reaches `fraction` of the final
    accuracy."""
    final = curve[-1]
    for t, acc in enumerate(curve):
        if acc >= fraction * final:
            return (t + 1) * dt_us
    return len(curve) * dt_us


def _set_lr(optimiser, lr):
    for group in optimiser.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False,
                dynamic_ncols=True, mininterval=0.5)


def _plain(model):
    return model.module if hasattr(model, "module") else model


def fit(cfg, dataset, chip, *, device="cpu", out=None, resume=False, log=print, progress=True,
        on_epoch=None, cuda_graph=True):
    """Train cfg.task on `dataset` in the loop on `chip`. Returns (model, history).

    With `out`, a checkpoint (model, optimiser, chip, epoch, history, RNG) is written after every
    epoch to out/checkpoint.pt (atomically); resume=True continues from it exactly.
    cuda_graph: on a CUDA device each training and evaluation batch is one replayed CUDA graph
    (bss2_backend.graphs; the same results as without); False runs them eagerly.
    """
    device = torch.device(device)
    ranks = Ranks()
    n_in = dataset.x_train[0].numel() if cfg.task not in SEQUENCE_TASKS else \
        dataset.x_train.shape[-1]
    signature = cfg.network_signature(n_in, dataset.classes)
    model = build_network(cfg, chip, n_in, dataset.classes).to(device)
    # capturable: the step count lives on the device, so a captured step advances it (the same
    # arithmetic with and without graphs; the CPU keeps torch's default)
    # on a GPU the learning rate is a device tensor, so a captured step sees the schedule's
    # in-place updates
    capturable = device.type == "cuda"
    optimiser = torch.optim.Adam(model.parameters(), capturable=capturable,
                                 lr=torch.tensor(cfg.lr, device=device) if capturable else cfg.lr)
    start, history = 0, []
    path = None if out is None else out / "checkpoint.pt"
    if resume and path is not None and path.exists():
        state = load_checkpoint(path)
        check_matches(state, path, cfg, chip, signature)
        start, history = restore(state, path, model, optimiser, chip)
        log(f"resumed from {path} after epoch {start}")
        if start >= cfg.epochs:
            log(f"the checkpoint already holds {start} epochs (--epochs {cfg.epochs}): nothing "
                f"left to train; pass a larger --epochs to continue")
    elif resume:
        log(f"no checkpoint in {out}: starting afresh")
    if ranks.on:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, broadcast_buffers=False)
    train_totals = torch.zeros(4, dtype=torch.float64, device=device)
    train = _graphed(train_step(cfg, model, optimiser, train_totals), device, cuda_graph)
    train.totals = train_totals
    eval_totals = torch.zeros(2 + chips_of(model), dtype=torch.float64, device=device)
    test = _graphed(eval_step(cfg, model, eval_totals), device, cuda_graph)
    test.totals = eval_totals
    if device.type == "cuda":
        log(f"CUDA graphs: {'on' if train.reason is None else 'off (' + train.reason + ')'}")
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        _set_lr(optimiser, lr_at(cfg, epoch))
        loss, train_acc, spikes = run_epoch(cfg, model, optimiser, dataset.x_train, dataset.y_train,
                                            epoch, device, ranks, progress, step=train)
        result = evaluate(cfg, model, dataset.x_test, dataset.y_test, device, ranks, step=test,
                          details=True)
        test_acc, test_spikes = result["accuracy"], result["spikes_per_hidden_neuron"]
        row = {"epoch": epoch + 1, "loss": loss, "train_accuracy": train_acc,
               "test_accuracy": test_acc, "spikes_per_hidden_neuron": spikes,
               "test_spikes_per_hidden_neuron": test_spikes, "seconds": time.time() - t0,
               "cuda_graphs": train.captured,
               "time_to_decision_us": result["decision_steps"] * chip.dt_us,
               "test_spikes_per_sample": result["spikes_per_sample"]}
        history.append(row)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in epoch {epoch + 1}; lower --lr")
        log(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:.4f}  train {train_acc:.4f}  "
            f"test {test_acc:.4f}  spikes/hidden neuron/sample {spikes:.3f}  {row['seconds']:.1f}s")
        if path is not None and ranks.main:
            save_torch(make_checkpoint(cfg, _plain(model), optimiser, chip, epoch + 1, history,
                                       signature), path)
        if on_epoch is not None and ranks.main:
            on_epoch(_plain(model), history)
    return _plain(model), history
