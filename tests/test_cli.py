import json
import subprocess
import sys

from bss2_backend import cli


def test_info_json_reports_version_device_constants_and_mismatch(capsys):
    assert cli.main(["info", "--seed", "4", "--mismatch", "0.1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] and info["backend"] == ("triton" if info["cuda"] else "torch")
    assert info["constants"]["NEURON_CIRCUITS"] == 512 and info["constants"]["WEIGHT_MAX"] == 63
    assert info["chip"]["seed"] == 4 and info["chip"]["mismatch"]["leak"] == 0.1
    leak = info["mismatch_summary"]["leak_lsb"]
    assert 80 * 0.07 < leak["std"] < 80 * 0.13
    mapping = info["snntorch_mapping"]
    assert "tau_mem=10 us" in mapping["hidden.lif1"] and "LI readout" in mapping["readout.li"]


def test_info_text_and_bad_mismatch_is_a_one_line_error(capsys):
    assert cli.main(["info", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "NEURON_CIRCUITS" in out and "leak_lsb" in out
    assert cli.main(["info", "--mismatch", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sigma_d=3.0 is out of range" in err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "bss2_backend", "info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["constants"]["CADC_BITS"] == 8


def test_info_plot_writes_mismatch_histograms(tmp_path, capsys):
    png = tmp_path / "mismatch.png"
    assert cli.main(["info", "--seed", "2", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000 and str(png) in capsys.readouterr().out
