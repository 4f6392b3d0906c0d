"""Users' own data (docs/data.md#your-data): the npy folder and CSV loaders, the shared layouts and labels,
every refusal as one line naming the file, and how config paths resolve (docs/data.md#paths)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_bad_input, run_cli
from sbnn.config import config_from_dict, load_config
from sbnn.data import DataError, load_dataset
from sbnn.data import csv_file
from sbnn.data.csv_file import load_csv   # the loader itself: raw features, before any preprocessing
from sbnn.training.checkpoint import config_differences


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def save_folder(folder: Path, **arrays: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)
    return folder


def good_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x_train": rng.random((6, 4)).astype(np.float32), "y_train": np.array([0, 1, 2, 0, 1, 2]),
            "x_test": rng.random((3, 4)).astype(np.float32), "y_test": np.array([2, 1, 0])}


# ------------------------------------------------------------------------------------------------ npy


def test_npy_folder_is_memory_mapped_and_takes_every_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = save_folder(tmp_path / "features", **good_arrays(rng))
    data = load_dataset("npy", path=folder)
    assert isinstance(data.x_train, np.memmap) and data.x_train.dtype == np.float32
    assert data.input_shape == (4,) and data.steps is None and data.num_classes == 3 and data.classes is None
    np.testing.assert_array_equal(data.x_test, np.load(folder / "x_test.npy"))

    images = save_folder(tmp_path / "images", x_train=rng.random((4, 2, 5, 5)), y_train=np.array(["cat", "dog"] * 2),
                         x_test=rng.random((2, 2, 5, 5)), y_test=np.array(["dog", "ant"]))
    data = load_dataset("npy", path=images)
    assert data.input_shape == (2, 5, 5) and data.steps is None and data.x_train.dtype == np.float32
    assert data.classes == ("ant", "cat", "dog") and data.num_classes == 3
    assert data.y_train.tolist() == [1, 2, 1, 2] and data.y_test.tolist() == [2, 0]

    frames = (rng.random((3, 7, 2, 4, 4)) < 0.2).astype(np.int16)
    events = save_folder(tmp_path / "events", x_train=frames, y_train=np.arange(3), x_test=frames[:1], y_test=[4])
    data = load_dataset("npy", path=events)
    assert data.steps == 7 and data.input_shape == (2, 4, 4) and data.x_train.dtype == np.uint8
    assert data.num_classes == 5
    assert load_dataset("npy", path=events, num_classes=8).num_classes == 8


def forged_npy(path: Path) -> None:
    """An .npy whose header declares a billion rows but stores 8 bytes."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 4)})
        file.write(b"\0" * 8)


@pytest.mark.parametrize(("damage", "expected"), [
    ("no_folder", "not found"),
    ("missing", "missing y_test.npy"),
    ("object", "x_train.npy: an object array"),
    ("forged", "declares shape (1000000000, 4)"),
    ("not_npy", "x_test.npy: not a valid .npy array"),
    ("nan", "x_train.npy contains NaN or Inf"),
    ("lengths", "y_train.npy must be 6 integer labels"),
    ("float_labels", "y_test.npy must be 3 integer labels"),
    ("negative", "y_test.npy has negative labels"),
    ("mixed", "text labels but the others integers"),
    ("empty", "x_test.npy holds no samples"),
    ("shapes", "does not match"),
    ("ndim", "x_train.npy has shape (6,)"),
    ("text_x", "not numbers"),
    ("too_few_classes", "labels reach 2, outside 0..1"),
])
def test_npy_folder_refusals_name_the_file(tmp_path, damage, expected):
    arrays = good_arrays(np.random.default_rng(1))
    changes = {"nan": {"x_train": np.full((6, 4), np.nan)}, "lengths": {"y_train": np.array([0, 1])},
               "float_labels": {"y_test": np.array([0.0, 1.0, 2.5])}, "negative": {"y_test": np.array([0, -1, 1])},
               "mixed": {"y_test": np.array(["a", "b", "c"])}, "empty": {"x_test": np.zeros((0, 4)),
                                                                         "y_test": np.zeros(0, int)},
               "shapes": {"x_test": np.zeros((3, 5))}, "ndim": {"x_train": np.zeros(6)},
               "text_x": {"x_train": np.full((6, 4), "a")}}
    arrays.update(changes.get(damage, {}))
    folder = tmp_path / "data"
    if damage != "no_folder":
        save_folder(folder, **arrays)
    if damage == "missing":
        (folder / "y_test.npy").unlink()
    elif damage == "object":
        np.save(folder / "x_train.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif damage == "forged":
        forged_npy(folder / "x_train.npy")
    elif damage == "not_npy":
        (folder / "x_test.npy").write_bytes(b"just text")
    with pytest.raises(DataError) as error:
        load_dataset("npy", path=folder, **({"num_classes": 2} if damage == "too_few_classes" else {}))
    message = one_line(error)
    assert message.startswith(str(folder)) and expected in message, message


def test_npz_takes_images_and_text_labels(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "images.npz", x_train=rng.random((4, 1, 3, 3)), y_train=np.array(["b", "a", "b", "c"]),
             x_test=rng.random((2, 1, 3, 3)), y_test=np.array(["c", "a"]))
    data = load_dataset("npz", path=tmp_path / "images.npz", encoding="rate", steps=3)
    assert data.x_train.shape == (4, 3, 1, 3, 3) and data.classes == ("a", "b", "c")
    assert data.y_train.tolist() == [1, 0, 1, 2]


# ------------------------------------------------------------------------------------------------ csv


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(header)] + [delimiter.join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def table(count: int = 20) -> list[list[object]]:
    """``count`` rows: two features and a text label, half ``yes`` and half ``no``."""
    return [[i, i * 0.5, "yes" if i % 2 else "no"] for i in range(count)]


def test_csv_single_file_split_is_stratified_seeded_and_in_file_order(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b", "answer"], table(20))
    data = load_csv(path)
    assert data.classes == ("no", "yes") and data.num_classes == 2 and data.input_shape == (2,)
    assert len(data.x_test) == 4 and np.bincount(data.y_test).tolist() == [2, 2]       # 0.2 of each class
    assert data.x_train.dtype == np.float32 and list(data.x_train[:, 0]) == sorted(data.x_train[:, 0])
    np.testing.assert_array_equal(data.y_train, (data.x_train[:, 0] % 2).astype(int))  # labels stay with rows
    again = load_csv(path)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    other = load_csv(path, seed=1, test_fraction=0.5)
    assert len(other.x_test) == 10 and not np.array_equal(other.x_test[:4], data.x_test)


def test_csv_label_column_choice(tmp_path):
    rows = [[i // 3, i % 2, 5 - i] for i in range(9)]
    path = write_csv(tmp_path / "t.csv", ["x", "Class", "z"], rows)
    assert load_dataset("csv", path=path).num_classes == 2                      # the column named class
    by_position = load_csv(path, label_column=0)
    assert by_position.num_classes == 3 and set(by_position.x_train[:, 0]) == {0.0, 1.0}   # Class is a feature
    with pytest.raises(DataError, match="-4 is outside the 3 columns"):
        load_dataset("csv", path=path, label_column=-4)
    plain = write_csv(tmp_path / "p.csv", ["x", "y", "kind"], [[i, i, i % 2] for i in range(10)])
    assert load_dataset("csv", path=plain).classes is None                      # the last column, integers
    two = write_csv(tmp_path / "two.csv", ["label", "target", "x"], [[0, 1, 2]] * 5)
    with pytest.raises(DataError, match="'label', 'target' could each be the label"):
        load_dataset("csv", path=two)
    assert load_dataset("csv", path=two, label_column="target").input_shape == (2,)


def test_csv_folder_of_train_and_test(tmp_path):
    folder = tmp_path / "tables"
    write_csv(folder / "train.csv", ["f1", "f2", "label"], [[1, 2, 0], [3, 4, 1], [5, 6, 1]], delimiter=";")
    write_csv(folder / "test.csv", ["f1", "f2", "label"], [[7, 8, 2.0]], delimiter=";")
    data = load_csv(folder, delimiter=";")
    assert len(data.x_train) == 3 and data.x_test.tolist() == [[7.0, 8.0]] and data.num_classes == 3
    with pytest.raises(ValueError, match="test_fraction splits a single file"):
        load_dataset("csv", path=folder, delimiter=";", test_fraction=0.3)
    write_csv(folder / "test.csv", ["f1", "f3", "label"], [[7, 8, 2]], delimiter=";")
    with pytest.raises(DataError, match="test.csv: its columns differ"):
        load_dataset("csv", path=folder, delimiter=";")


@pytest.mark.parametrize(("content", "expected"), [
    ("", "empty"),
    ("a,b,label\n", "a header but no data rows"),
    ("1,2,3\n4,5,6\n", "the first line holds numbers"),
    ("a,b,label\n1,2,x\n3,4\n", "line 3 has 2 fields, the header 3"),
    ("a,b,label\n1,two,x\n", "line 2, column 'b': 'two' is not a number"),
    ("a,b,label\n1,,x\n", "line 2, column 'b': an empty cell"),
    ("a,b,label\n1,nan,x\n", "column 'b': nan (NaN or Inf)"),
    ("a,b,label\n1,2,\n", "line 2: the label ('label') is empty"),
    ("a,b,label\n1,2,0.5\n3,4,1\n", "holds '0.5': labels must be class indices"),
    ("a,b,label\n1,2,-1\n3,4,1\n", "holds '-1'"),
    ("a,b,label\n1,2,0\n1,2,1\n", "test_fraction=0.2 of 2 rows leaves an empty split"),
    ("onlyone\n1\n", "one column"),
    ("a,b,label\n1,2,\"x\n", "not a readable CSV"),
])
def test_csv_refusals_name_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        load_dataset("csv", path=path)
    message = one_line(error)
    assert message.startswith(str(path)) and expected in message, message


def test_csv_refuses_other_encodings_missing_columns_and_large_files(tmp_path, monkeypatch):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("a,b,label\n1,2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text"):
        load_dataset("csv", path=latin)
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label"], table(10))
    with pytest.raises(DataError, match="no column 'kind' \\(label_column\\); columns: a, b, label"):
        load_dataset("csv", path=path, label_column="kind")
    with pytest.raises(DataError, match="file not found"):
        load_dataset("csv", path=tmp_path / "absent.csv")
    monkeypatch.setattr(csv_file, "MAX_CSV_BYTES", 64)
    with pytest.raises(DataError, match="more than the 0 MiB a CSV may hold here; store it as a folder of .npy"):
        load_dataset("csv", path=path)
    with pytest.raises(ValueError, match="delimiter must be one character"):
        load_dataset("csv", path=path, delimiter=";;")


def test_a_bad_csv_is_exit_code_2_on_the_command_line(tmp_path):
    write_csv(tmp_path / "data" / "bad.csv", ["a", "b", "label"], [[1, "x", 0], [2, 3, 1]])
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.toml").write_text('[data]\nname = "csv"\npath = "../data/bad.csv"\n')
    done = run_cli("train", tmp_path / "configs" / "run.toml", "--out", tmp_path / "run", cwd=tmp_path / "configs")
    assert_bad_input(done, str(tmp_path / "data" / "bad.csv"), "line 2, column 'b'")


# ------------------------------------------------------------------------------------------------ paths


def test_config_paths_resolve_from_the_config_folder_and_set_from_the_current_one(tmp_path, monkeypatch):
    configs = tmp_path / "project" / "configs"
    configs.mkdir(parents=True)
    (configs / "run.toml").write_text('[data]\nname = "csv"\npath = "../data/t.csv"\n')
    (configs / "mnist.toml").write_text('[data]\nname = "mnist"\nfile = "copies/mnist.pkl.gz"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    project = (tmp_path / "project").resolve()
    assert load_config(configs / "run.toml").data.path == str(project / "data" / "t.csv")
    assert load_config("../project/configs/run.toml").data.path == str(project / "data" / "t.csv")
    assert load_config(configs / "mnist.toml").data.options["file"] == str(project / "configs/copies/mnist.pkl.gz")
    typed = load_config(configs / "run.toml", ["data.path=mine.csv"]).data.path
    assert typed == str(elsewhere.resolve() / "mine.csv")
    assert load_config(configs / "run.toml", ["data.path=/abs/t.csv"]).data.path == "/abs/t.csv"
    home = load_config(configs / "run.toml", ["data.path=~/t.csv"]).data.path
    assert home == str(Path.home() / "t.csv")


def test_dict_configs_keep_paths_and_saved_configs_hold_absolute_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"data": {"name": "npz", "path": "data/x.npz"}})
    assert config.data.path == "data/x.npz"
    absolute = str(tmp_path.resolve() / "data" / "x.npz")
    assert config.to_dict()["data"]["path"] == absolute
    saved = tmp_path / "run" / "config.toml"
    saved.parent.mkdir()
    saved.write_text(config.to_toml())
    monkeypatch.chdir(saved.parent)
    reloaded = load_config(saved)        # from another folder: the recorded absolute path
    assert reloaded.data.path == absolute
    monkeypatch.chdir(tmp_path)          # where the dict config's relative path means data/x.npz
    assert config_differences(reloaded, config) == []                               # a resume sees no change
    stored = config_from_dict(tomllib.loads(config.to_toml()), source="checkpoint")
    assert config_differences(stored, reloaded) == []


def test_a_resume_accepts_moved_data_of_the_same_content_only(tmp_path):
    first, moved, other = tmp_path / "a" / "t.npz", tmp_path / "b" / "t.npz", tmp_path / "c" / "t.npz"
    for path, label in ((first, 1), (moved, 1), (other, 2)):
        path.parent.mkdir()
        np.savez(path, x_train=np.zeros((2, 3)), y_train=[0, label], x_test=np.zeros((1, 3)), y_test=[0])
    configs = {path: config_from_dict({"data": {"name": "npz", "path": str(path)}}) for path in (first, moved, other)}
    assert config_differences(configs[first], configs[moved]) == []
    assert config_differences(configs[first], configs[other]) == ["data.path"]
    gone = config_from_dict({"data": {"name": "npz", "path": str(tmp_path / "gone.npz")}})
    assert config_differences(configs[first], gone) == ["data.path"]
