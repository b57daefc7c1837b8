"""In-the-loop training on an emulated BrainScaleS-2 chip: `bss2 train` and `bss2 selfcal`.

    model.py    the paper's networks as snntorch code placed on the chip (what users copy)
    data.py     digits (bundled with scikit-learn) and MNIST (.npz or IDX), as 16x16 images
    shd.py      Spiking Heidelberg Digits HDF5 -> binned counts over 70 channels
    coding.py   latency code, max-over-time / sum-over-time losses, spike-count regulariser
    loop.py     epochs, evaluation, checkpoints that resume exactly, DDP under torchrun
    selfcal.py  the decalibration sweep (Fig. 4B): in the loop vs trained ideal and loaded
    plots.py    curves, Fig-3A-like activity panel, the sweep
    files.py    atomic writes (temporary file + rename)
    cli.py      the two sub-commands
"""
