"""Hardware facts of one BrainScaleS-2 (HX) chip, as named constants.

Every number here comes from the public electronicvisions sources (halco, haldls, calix, hxtorch).
Values that are plausible but unverified there ([U] below and elsewhere) are defaults in other
modules (bss2_backend.mismatch, bss2_backend.noise), never constants here.

Units: potentials in CADC LSB (the chip's 8-bit membrane ADC code), times in microseconds of
chip time. "Model units" put the calibrated leak potential at 0 and the threshold at 1.
"""

# --- Neuron circuits and synapse arrays (halco) --------------------------------------------------
NEURON_ROWS = 2                      # top and bottom hemisphere
NEURONS_PER_ROW = 256
NEURON_CIRCUITS = NEURON_ROWS * NEURONS_PER_ROW          # 512
SYNAPSE_ARRAYS = 2                   # one per hemisphere
SYNAPSE_ROWS = 256                   # rows per array (each row is excitatory or inhibitory)
SYNAPSE_COLUMNS = 256                # columns per array (one per neuron circuit)
ROWS_PER_SIGNED_INPUT = 2            # a signed input uses an exc/inh row pair: row = 2*pre + is_inh
SIGNED_INPUTS_PER_CIRCUIT = SYNAPSE_ROWS // ROWS_PER_SIGNED_INPUT   # 128
MAX_CIRCUITS_PER_NEURON = SYNAPSE_ARRAYS                 # top + bottom circuit -> 256 signed inputs
MAX_SIGNED_INPUTS_PER_NEURON = SIGNED_INPUTS_PER_CIRCUIT * MAX_CIRCUITS_PER_NEURON   # 256

# --- Weights (haldls; hxtorch Synapse) -----------------------------------------------------------
WEIGHT_BITS = 6
WEIGHT_MAX = 2**WEIGHT_BITS - 1      # 63: magnitude per synapse
WEIGHT_MIN_SIGNED = -WEIGHT_MAX      # -63 with the inhibitory row of the pair
DEFAULT_WEIGHT_SCALE = 64.0          # software -> hardware weight scale of the hxtorch examples (64-70)
WEIGHT_SCALE_MEASURED = 50.0         # measured for leak 80 / threshold 125 / tau 10 us (+-20 %)

# --- CADC membrane readout -----------------------------------------------------------------------
CADC_BITS = 8
CADC_MIN = 0
CADC_MAX = 2**CADC_BITS - 1          # 255: the ADC clips at its rails
CADC_RELIABLE_MIN = 30               # calibrated linear range 30..210 LSB
CADC_RELIABLE_MAX = 210
CADC_MV_PER_LSB = 4.5                # 0.15-1.05 V -> 20-220 LSB
CADC_SAMPLING_PERIOD_US = 1.7        # fastest sampling; ~2 us typical
CADC_OFFSET_STD_CALIBRATED_LSB = 3.0  # channel offsets after calibration are below this std

# --- Calibration targets (calix defaults) --------------------------------------------------------
LEAK_TARGET_LSB = 80.0
RESET_TARGET_LSB = 70.0
THRESHOLD_TARGET_LSB = 125.0
TAU_MEM_TARGET_US = 10.0
TAU_SYN_TARGET_US = 10.0
REFRACTORY_TARGET_US = 2.0

# --- Allowed calibration ranges (calix) ----------------------------------------------------------
LEAK_RANGE_LSB = (50.0, 160.0)
RESET_RANGE_LSB = (50.0, 160.0)
THRESHOLD_RANGE_LSB = (50.0, 220.0)
TAU_MEM_RANGE_US = (0.5, 60.0)
TAU_SYN_RANGE_US = (0.3, 30.0)
REFRACTORY_RANGE_US = (0.04, 32.0)

# --- Time ----------------------------------------------------------------------------------------
DT_US = 1.0                          # hxtorch integration step: 1 us of chip time
ACCELERATION = 1000.0                # chip time runs 1000x faster than biological time

# --- Model units ---------------------------------------------------------------------------------
# v_model = (v_lsb - LEAK_TARGET_LSB) / MODEL_UNIT_LSB: leak -> 0, threshold -> 1 (trace_scale 1/45)
MODEL_UNIT_LSB = THRESHOLD_TARGET_LSB - LEAK_TARGET_LSB

# --- Published results this emulator is compared against (Cramer et al., PNAS 2022) --------------
PAPER_MNIST_ACCURACY = 0.976
PAPER_MNIST_IMAGES_PER_SECOND = 85_000
PAPER_MNIST_HIDDEN = 246
PAPER_MNIST_OUTPUTS = 10
PAPER_MNIST_INPUTS = 256


def lsb_to_model(v_lsb):
    """CADC LSB -> model units (leak 0, threshold 1) with the nominal calibration."""
    return (v_lsb - LEAK_TARGET_LSB) / MODEL_UNIT_LSB


def model_to_lsb(v):
    """Model units -> CADC LSB with the nominal calibration."""
    return v * MODEL_UNIT_LSB + LEAK_TARGET_LSB
