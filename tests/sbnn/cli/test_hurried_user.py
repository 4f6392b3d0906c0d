"""A hurried user's mistakes on the command line: each is one stderr line naming the file and the problem (argparse:
its own one error line), exit code 2, no traceback, nothing written; what is not a mistake but may
surprise (exporting an unfinished run) is said. In-process (``sbnn.cli.main``), real files from one tiny run."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from sbnn.cli import main
from sbnn.config import config_from_dict
from sbnn.data import DataError, load_dataset
from sbnn.train import train
from tiny_configs import TINY_EXPORTABLE_RUN


def bad_input_line(capsys, argv: list) -> str:
    """Run ``sbnn ARGV`` expecting exit code 2 with one stderr line and no traceback; return that line."""
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def refused_by_parser(capsys, argv: list) -> str:
    """argparse's own refusal: one error line pointing at --help, exit code 2, no traceback; returns stderr."""
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--help)" in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny run with its posterior-mean export (``run/export``)."""
    run = tmp_path_factory.mktemp("hurried") / "run"
    shutil.copytree(trained_run / "run", run)
    assert main(["export", str(run), "--json"]) == 0
    return run / "export"


def copy_export(exported: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    return folder


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]"])
def test_damaged_export_json_is_named(exported, tmp_path, capsys, text):
    """A truncated or hand-edited export.json was a JSONDecodeError/AttributeError (exit code 4) in the float
    backend, and 'no sbnn export.json' for raw features."""
    folder = copy_export(exported, tmp_path)
    (folder / "export.json").write_text(text)
    line = bad_input_line(capsys, ["simulate", folder, "--backend", "torch"])
    assert f"{folder / 'export.json'}:" in line
    raw = tmp_path / "raw.npy"
    np.save(raw, np.zeros((2, 12), np.float32))   # raw features of the 12-channel Randman export
    line = bad_input_line(capsys, ["simulate", folder, "--inputs", raw])
    assert f"{folder / 'export.json'}:" in line and "no sbnn export.json" not in line


@pytest.mark.parametrize(("argv", "fragment"), [
    (["simulate", "{export}", "--seed", "-1"], "argument --seed"),        # was numpy's ValueError, exit code 4
    (["energy", "{export}", "--density", "2"], "argument --density"),     # was run as all-ones spikes
    (["verify", "{export}", "--density", "nan"], "argument --density"),   # was run as all-zero spikes
    (["simulate", "{export}", "--timeout", "-1"], "argument --timeout"),  # was exit code 3, 'Lava timed out'
    (["import", "{model}", "--seed", "-2"], "argument --seed"),          # was exit code 4
    (["import", "{model}", "--density", "1.5"], "argument --density"),
    (["export", "{run}", "--weights", "sample", "--seed", "-1"], "argument --seed"),  # wrote export_sample-1
    # An empty path (--out "$UNSET") was read as no --out: the default folder written, for a posterior sample
    # without the --force that protects the pipeline's export_sample<seed>; --calibration "" calibrated on noise.
    (["export", "{run}", "--weights", "sample", "--out", ""], "argument --out"),
    (["import", "{model}", "--calibration", ""], "argument --calibration"),
    (["train", "{config}", "--out", " "], "argument --out"),
    (["pipeline", "{config}", "--out", ""], "argument --out"),
    (["simulate", "{export}", "--inputs", ""], "argument --inputs"),
    (["energy", "{export}", "--labels", ""], "argument --labels"),
    (["train", "{config}", "--resume", "--overwrite"], "not allowed with"),   # was --resume, silently
])
def test_out_of_range_options_are_refused(exported, capsys, argv, fragment):
    names = {"{export}": exported, "{model}": exported / "model.nir", "{run}": exported.parent,
             "{config}": exported.parent / "config.toml"}
    before = sorted(path.name for path in exported.parent.iterdir())
    err = refused_by_parser(capsys, [names.get(arg, arg) for arg in argv])
    assert fragment in err
    assert sorted(path.name for path in exported.parent.iterdir()) == before


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_labels_outside_the_networks_classes(exported, tmp_path, capsys, labels):
    """Labels the 3-output network can never predict were scored as accuracy 0 without a word."""
    x = tmp_path / "x.npy"
    np.save(x, np.load(exported / "inputs.npy")[[0, 0]])
    y = tmp_path / "y.npy"
    np.save(y, np.array(labels))
    line = bad_input_line(capsys, ["simulate", exported, "--inputs", x, "--labels", y])
    assert f"{y}:" in line and "0..2" in line


def test_single_class_data_is_refused(tmp_path, capsys):
    """All labels one class trained a one-output 'classifier' at 100 % (the built-in randman refuses it)."""
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    path = tmp_path / "one.npz"
    np.savez(path, x_train=x[:8], y_train=np.zeros(8, int), x_test=x[8:], y_test=np.zeros(4, int))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset("npz", path=path)
    texts = tmp_path / "text.npz"
    np.savez(texts, x_train=x[:8], y_train=np.array(["cat"] * 8), x_test=x[8:], y_test=np.array(["cat"] * 4))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset("npz", path=texts)
    assert load_dataset("npz", path=path, num_classes=2).num_classes == 2   # absent classes stay possible
    config = tmp_path / "one.toml"
    config.write_text('[data]\nname = "npz"\npath = "one.npz"\n[model]\nkind = "bnn"\nhidden = [4]\n'
                      '[train]\nepochs = 1\nthreads = 1\n')
    line = bad_input_line(capsys, ["train", config, "--out", tmp_path / "run"])
    assert f"{path}:" in line
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_run_is_refused(exported, tmp_path, capsys):
    """A checkpoint.pt copied from a run on other data failed deep in the quantiser ('calibration data must
    have shape ...'), naming neither file."""
    other = tmp_path / "other"
    text = TINY_EXPORTABLE_RUN.replace("num_units = 12", "num_units = 6")
    train(config_from_dict(tomllib.loads(text), source="other.toml"), other, json_mode=True)
    run = tmp_path / "run"
    shutil.copytree(exported.parent, run)
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    before = sorted(path.name for path in (run / "export").iterdir())
    line = bad_input_line(capsys, ["export", run])
    assert f"{run / 'checkpoint.pt'}:" in line and f"{run / 'config.toml'}" in line
    assert sorted(path.name for path in (run / "export").iterdir()) == before


@pytest.mark.parametrize(("change", "fragment"), [(lambda x: x * 0.5, "integer-valued"),
                                                  (lambda x: np.where(x > 0, np.nan, 0.0), "integer-valued"),
                                                  (lambda x: -x.astype(np.int64), "0/1 input spikes"),
                                                  (lambda x: x.astype(np.int64) * 1000, "0/1 input spikes")])
def test_encoded_inputs_must_be_what_the_network_takes(exported, tmp_path, capsys, change, fragment):
    """Fractions stopped hw_sim with 'input spikes must be integer-valued' (no file named) while the float
    backend ran them; -1 and 1000 ran as one spike in hw_sim and as -1 and 1000 in the float model."""
    x = tmp_path / "x.npy"
    np.save(x, change(np.load(exported / "inputs.npy").astype(np.float64)))
    for backend in ("hw_sim", "torch"):
        line = bad_input_line(capsys, ["simulate", exported, "--inputs", x, "--backend", backend])
        assert f"{x}:" in line and fragment in line


@pytest.mark.parametrize("shape", [(4, 5, 7), (0, 10, 12), (4, 0, 12), "nan"])
def test_import_calibration_file_is_named(exported, tmp_path, capsys, shape):
    """A wrong --calibration was blamed on the model file ('m.nir: calibration data must have shape ...'), and
    an empty one was numpy's 'cannot reshape array of size 0'."""
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.full((4, 10, 12), np.nan) if shape == "nan" else np.zeros(shape))
    out = tmp_path / "imported"
    line = bad_input_line(capsys, ["import", exported / "model.nir", "--calibration", calibration, "--out", out])
    assert line.startswith(f"sbnn import: {calibration}: calibration inputs")
    assert not out.exists()


def test_export_of_an_unfinished_run_says_so(exported, tmp_path, capsys):
    """A run stopped at epoch 1 of 3 (killed, or still to be resumed) was exported without a word."""
    run = tmp_path / "run"
    shutil.copytree(exported.parent, run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("epochs = 1\n", "epochs = 3\n"))
    assert main(["export", str(run), "--out", str(tmp_path / "export"), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any("has not finished training" in warning for warning in warnings)
    assert main(["export", str(exported.parent), "--out", str(tmp_path / "finished"), "--json"]) == 0
    assert not any("finished training" in w for w in json.loads(capsys.readouterr().out)["warnings"])


@pytest.mark.parametrize("damage", [b"[1]", b'{"history": 5}', b"\xff\xfe"])
def test_pipeline_takes_a_damaged_metrics_json_as_unfinished(exported, tmp_path, damage):
    """metrics.json holding a list, a history that is not a list, or bytes that are not UTF-8 stopped
    ``sbnn pipeline`` with an internal error (exit code 4); it now trains the run again."""
    from sbnn.config import load_config
    from sbnn.pipeline import _training_finished

    run = tmp_path / "run"
    shutil.copytree(exported.parent, run)
    assert _training_finished(run, load_config(run / "config.toml"))
    (run / "metrics.json").write_bytes(damage)
    assert not _training_finished(run, load_config(run / "config.toml"))


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(trained_run, tmp_path):
    """A slip of the finger (model.hidden = [100000000]) built 11 GiB of parameters and was killed by the
    out-of-memory killer (exit code 137) while training, which may take other processes with it. The size is
    now read from a meta-device build first. Run with an address-space limit, so that a regression fails
    with a MemoryError here instead of waking the machine's out-of-memory killer."""
    import resource
    import subprocess
    import sys

    from conftest import ROOT

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "sbnn", "train", str(trained_run / "tiny.toml"), "--out", str(out),
                           "--set", "model.hidden=[100000000000]"], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_memory, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "GiB available" in done.stderr, done.stderr
    assert not out.exists()


def test_out_under_a_file_names_the_folder_asked_for(exported, tmp_path, capsys):
    """``--out notes.txt/sub`` said only 'notes.txt: File exists', and an error on a hidden temporary or lock
    file ('.sbnn.lock: Not a directory', '.x.123-ab.new: Read-only file system') named no folder of the user's."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = bad_input_line(capsys, ["export", exported.parent, "--out", notes / "sub"])
    assert f"{notes}: " in line and "a file, where a folder is needed" in line
    line = bad_input_line(capsys, ["import", exported / "model.nir", "--out", notes / "sub"])
    assert line.rstrip().endswith(f"while writing {notes / 'sub'}")
    assert notes.read_text() == "mine"


def test_config_saved_with_a_byte_order_mark_reads(trained_run, tmp_path):
    """Notepad's UTF-8 starts with a byte-order mark, which was 'not valid TOML (Invalid statement (at line 1,
    column 1))'."""
    from sbnn.config import load_config

    plain = trained_run / "tiny.toml"
    marked = tmp_path / "marked.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_config(marked).to_dict() == load_config(plain).to_dict()


@pytest.mark.parametrize(("toml", "hint"), [
    ('[data]\nname = "randman"\n[model]\nhidden = [4]\nepochs = 1\n',
     "model.epochs: unknown key (did you mean train.epochs?)"),
    ('[data]\nname = "randman"\nlr = 0.1\n', "data.lr: unknown key (did you mean train.lr?"),
    ('[data]\nname = "randman"\n[train]\nhidden = [4]\n', "train.hidden: unknown key (did you mean model.hidden?)"),
])
def test_a_key_under_the_wrong_heading_names_its_section(tmp_path, capsys, toml, hint):
    """A key of another section was only 'unknown key', as if it did not exist."""
    config = tmp_path / "wrong.toml"
    config.write_text(toml)
    assert hint in bad_input_line(capsys, ["train", config, "--out", tmp_path / "run"])


def test_a_run_folder_given_as_the_config(exported, capsys):
    """``sbnn train runs/x`` said "cannot be read ([Errno 21] Is a directory: 'runs/x')"."""
    run = exported.parent
    line = bad_input_line(capsys, ["train", run])
    assert f"{run}: is a folder, not a TOML run configuration" in line and f"{run / 'config.toml'}" in line


def test_export_into_a_run_another_process_is_writing(exported, tmp_path):
    """``sbnn export RUN --out OTHER/export`` replaced the export of a pipeline still writing OTHER (held its
    own run's lock only): OTHER's results and report then described two networks."""
    from conftest import assert_bad_input, run_cli
    from safeio.atomic import folder_lock

    other = tmp_path / "other"
    shutil.copytree(exported.parent, other)
    before = (other / "export" / "loihi.h5").read_bytes()
    with folder_lock(other, "sbnn pipeline"):   # another process's lock, as this test's process holds it
        done = run_cli("export", exported.parent, "--out", other / "export")
    assert_bad_input(done, f"{other}: process {os.getpid()} (sbnn pipeline) is writing this folder")
    assert (other / "export" / "loihi.h5").read_bytes() == before


def test_nir_graph_with_an_unconnected_output(tmp_path, capsys):
    """An Output no edge reaches made nir.read add a second Input ('input_output'), and the message said only
    'found 2' of a graph that has one."""
    import nir

    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([4])), "lin": nir.Linear(weight=np.ones((3, 4))),
                                "lif": nir.LIF(tau=np.full(3, 0.01), r=np.ones(3), v_leak=np.zeros(3),
                                               v_threshold=np.ones(3)),
                                "output": nir.Output(output_type=np.array([3]))},
                         edges=[("input", "lin"), ("lin", "lif")], type_check=False)
    model = tmp_path / "dangling.nir"
    nir.write(model, graph)
    line = bad_input_line(capsys, ["import", model, "--dt", "0.001", "--out", tmp_path / "imported"])
    assert f"{model}: " in line and "input_output" in line and "unconnected" in line
    assert not (tmp_path / "imported").exists()


def test_pipeline_refuses_signed_sequences_before_training(tmp_path, capsys):
    """Signed float sequences train but cannot be exported (Loihi's payloads are unsigned): the pipeline says
    so at the start, before an hour of training, and trains nothing; `sbnn train` still takes them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5, 3)).astype(np.float32)   # (N, T, F) sequences with negative values
    y = np.arange(16) % 2
    np.savez(tmp_path / "signed.npz", x_train=x[:12], y_train=y[:12], x_test=x[12:], y_test=y[12:])
    config = tmp_path / "signed.toml"
    config.write_text('[data]\nname = "npz"\npath = "signed.npz"\n[model]\nkind = "snn"\nhidden = [4]\n'
                      '[train]\nepochs = 1\nthreads = 1\n')
    line = bad_input_line(capsys, ["pipeline", config, "--out", tmp_path / "run"])
    assert str(config) in line and "non-negative" in line and "nothing was trained" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert main(["train", str(config), "--out", str(tmp_path / "trained")]) == 0
    capsys.readouterr()
    shifted = tmp_path / "shifted.npz"   # the fix the message names: shifted to >= 0, the pipeline runs
    np.savez(shifted, x_train=x[:12] - x.min(), y_train=y[:12], x_test=x[12:] - x.min(), y_test=y[12:])
    config.write_text(config.read_text().replace("signed.npz", "shifted.npz"))
    from sbnn.config import load_config
    from sbnn.pipeline import _check_exportable_inputs

    _check_exportable_inputs(load_config(config))   # no error


def test_import_into_a_users_folder_adds_only_the_export(exported, tmp_path, capsys):
    """`import --out X/y` locks X while it writes y; X, the user's folder, keeps no lock file of ours."""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert main(["import", str(exported / "model.nir"), "--out", str(users / "imported"), "--samples", "2",
                 "--steps", "5"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in users.iterdir()) == ["imported", "notes.txt"]
    assert (users / "imported" / "loihi.h5").is_file()
