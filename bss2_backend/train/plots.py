"""Figures written to --out: training curves, a Fig-3A-like panel, the self-calibration sweep."""
import torch

from ..files import save_figure


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path):
    """Loss and train/test accuracy per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [r["test_accuracy"] for r in history], marker="o", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax_acc.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


@torch.no_grad()
def plot_activity(cfg, model, x, y, path, count=3):
    """Input raster, hidden raster and readout traces of the first `count` test samples (Fig. 3A)."""
    from .loop import encode
    plt = _pyplot()
    model.eval()
    device = next(model.parameters()).device
    spikes = encode(cfg, x[:count].to(device))
    hidden, readout = model(spikes)
    if hidden.dim() == 4:                 # a population: its first chip
        hidden, readout = hidden[0], readout[0]
    spikes, hidden, readout = spikes.cpu(), hidden.cpu(), readout.cpu()
    count = spikes.shape[1]
    fig, axes = plt.subplots(3, count, figsize=(3.3 * count, 7), sharex=True, squeeze=False)
    for b in range(count):
        label = int(y[b])
        for row, (data, name) in enumerate(((spikes, "input"), (hidden, "hidden"))):
            t, n = torch.nonzero(data[:, b] > 0, as_tuple=True)
            ax = axes[row, b]
            ax.scatter(t.numpy(), n.numpy(), s=2, c="k", marker="|")
            ax.set(ylabel=f"{name} neuron", ylim=(-1, data.shape[-1]))
        ax = axes[2, b]
        for c in range(readout.shape[-1]):
            ax.plot(readout[:, b, c].numpy(), lw=2.0 if c == label else 0.8,
                    color="C3" if c == label else "0.6")
        ax.set(xlabel="time step (us)", ylabel="readout membrane")
        axes[0, b].set_title(f"test sample {b}, label {label}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_selfcal(rows, path):
    """Test accuracy against sigma_d: in the loop vs trained ideal and loaded (Fig. 4B); the mean
    over chip seeds with the sample standard deviation as error bars, each chip as a dot."""
    from .selfcal import summary
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    stats = summary(rows)
    for key, marker, label in (("itl_accuracy", "o", "trained in the loop"),
                               ("transfer_accuracy", "s", "trained ideal, loaded on the chip")):
        line = ax.errorbar([r["sigma_d"] for r in stats], [r[f"{key}_mean"] for r in stats],
                           yerr=[r[f"{key}_std"] for r in stats], marker=marker, capsize=3,
                           label=label)
        ax.scatter([r["sigma_d"] for r in rows], [r[key] for r in rows], s=8, alpha=0.4,
                   color=line[0].get_color())
    seeds = len({r["chip_seed"] for r in rows})
    ax.set(xlabel="decalibration sigma_d", ylabel="test accuracy", ylim=(0, 1),
           title=f"{seeds} chip seed{'s' if seeds > 1 else ''}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(confusion, per_speaker, path, title=""):
    """Confusion matrix (rows: true digit, columns: predicted) and accuracy per speaker."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    c = confusion.float()
    ax.imshow((c / c.sum(1, keepdim=True).clamp_min(1)).numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            if c[i, j]:
                ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if c[i, j] > 0.5 * c[i].sum() else "black")
    ax.set(xlabel="predicted digit", ylabel="spoken digit", xticks=range(c.shape[1]),
           yticks=range(c.shape[0]), title=title)
    names = sorted(per_speaker)
    bx.bar(range(len(names)), [per_speaker[n] for n in names], color="C0")
    bx.set(xticks=range(len(names)), ylim=(0, 1), ylabel="test accuracy")
    bx.set_xticklabels(names, rotation=30)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_decision(curve, dt_us, decided_us, path):
    """Test accuracy against the time the readout may be looked at (Fig. 3C)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([(t + 1) * dt_us for t in range(len(curve))], curve, marker=".")
    ax.axvline(decided_us, color="C3", ls="--", lw=1,
               label=f"99 % of the final accuracy after {decided_us:g} us")
    ax.set(xlabel="readout restricted to [0, t] (us of chip time)", ylabel="test accuracy",
           ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_sweep(rows, path):
    """Test accuracy against hidden spikes per sample, one point per regularisation (Fig. 3E)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    by_spikes = sorted(rows, key=lambda r: r["spikes_per_sample"])
    ax.plot([r["spikes_per_sample"] for r in by_spikes], [r["test_accuracy"] for r in by_spikes],
            marker="o")
    for r in rows:
        ax.annotate(f"{r['reg']:g}", (r["spikes_per_sample"], r["test_accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set(xscale="log", xlabel="hidden spikes per sample (labels: --reg)",
           ylabel="test accuracy", ylim=(0, 1))
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
