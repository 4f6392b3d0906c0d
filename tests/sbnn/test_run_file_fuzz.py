"""The files of a run folder fuzzed with hypothesis (issue 7 §1): ``checkpoint.pt`` (damaged bytes, fields
replaced by junk, NaN tensors, pickled payloads that must never run) and the config TOML (damaged bytes,
any text, odd values and overrides). Each is accepted or refused in one line naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import FUZZ, damaged_bytes, read_or_refuse, scratch_dir
from sbnn.config import ConfigError, load_config
from sbnn.train import RunFolderError, load_trained_model


# --------------------------------------------------------------------------------------------------
# checkpoint.pt

JUNK_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.floats(),
    st.text(max_size=20), st.lists(st.integers(-5, 10 ** 12), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from([torch.full((3,), float("nan")), torch.zeros(2, 2), torch.tensor(10 ** 12), torch.empty(0)]),
)


class Payload:
    """Unpickling this object would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_checkpoint_damaged(trained_run, data):
    run = trained_run / "run"
    content = (run / "checkpoint.pt").read_bytes()
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    with scratch_dir() as folder:
        shutil.copyfile(run / "config.toml", folder / "config.toml")
        marker = folder / "payload-ran"
        how = data.draw(st.sampled_from(["bytes", "field", "model tensor", "payload"]))
        if how == "bytes":
            (folder / "checkpoint.pt").write_bytes(data.draw(damaged_bytes(content, b"PK\x03\x04")))
        else:
            checkpoint = dict(good)
            if how == "field":
                checkpoint[data.draw(st.sampled_from(sorted(good) + ["unknown"]))] = data.draw(JUNK_VALUES)
            elif how == "model tensor":
                model = dict(good["model"])
                model[data.draw(st.sampled_from(sorted(model)))] = data.draw(st.sampled_from(
                    [torch.full((2, 3), float("nan")), torch.zeros(7), torch.tensor(float("inf")), "text", None]))
                checkpoint["model"] = model
            else:
                checkpoint[data.draw(st.sampled_from(sorted(good)))] = Payload(marker)
            torch.save(checkpoint, folder / "checkpoint.pt")
        model = read_or_refuse(RunFolderError, folder / "checkpoint.pt", load_trained_model, folder)
        assert not marker.exists()
        if model is not None:
            assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


# --------------------------------------------------------------------------------------------------
# config TOML

TOML_VALUES = st.one_of(
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "true", '""', '"a\\u0000b"', "[]", "{}",
                     "[[[[[[[[1]]]]]]]]", "[" * 3000 + "]" * 3000, "{a=" * 800 + "1" + "}" * 800,
                     '"../../../../etc"', "1979-05-27T07:32:00Z", "[1, \"a\", 2.5]"]),
    st.floats(allow_nan=True, allow_infinity=False).map(repr),
    st.text(max_size=10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_config_damaged(trained_run, data):
    text = (trained_run / "tiny.toml").read_text()
    how = data.draw(st.sampled_from(["bytes", "text", "value", "override"]))
    overrides: list[str] = []
    with scratch_dir() as folder:
        path = folder / "run.toml"
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(text.encode())))
        elif how == "text":
            path.write_bytes(data.draw(st.text(max_size=300)).encode("utf-8", "surrogatepass"))
        else:
            lines = text.splitlines()
            keys = [index for index, line in enumerate(lines) if "=" in line]
            value = data.draw(TOML_VALUES)
            if how == "value":
                index = data.draw(st.sampled_from(keys))
                lines[index] = lines[index].split("=")[0] + "= " + value
            else:
                section_key = data.draw(st.sampled_from(["data.steps", "train.lr", "model.hidden", "train.seed",
                                                         "data.path", "train.estimator.tau", "export.dt"]))
                overrides = [f"{section_key}={value}"]
            path.write_text("\n".join(lines) + "\n")
        read_or_refuse(ConfigError, path, load_config, path, overrides)
