"""Figures of a chip's drawn fixed pattern."""
from . import constants as C
from .files import save_figure


def plot_mismatch(chip, path):
    """Histograms of every drawn circuit parameter (the first chip's 512 circuits) and row gains."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = C.NEURON_CIRCUITS
    panels = list(chip.neurons._asdict().items()) + [("row_gain", chip.synapse_rows)]
    fig, axes = plt.subplots(2, 5, figsize=(16, 6))
    for ax, (name, values) in zip(axes.flat, panels):
        data = values[:n if name != "row_gain" else C.SYNAPSE_ARRAYS * C.SYNAPSE_ROWS].numpy()
        ax.hist(data, bins=40, color="tab:blue", alpha=0.8)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{chip!r}: drawn fixed-pattern mismatch", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
