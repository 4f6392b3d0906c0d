"""The files of a run folder fuzzed with hypothesis (issue 7 §1): ``checkpoint.pt`` (damaged bytes, fields
replaced by junk, NaN tensors, pickled payloads that must never run) and the config TOML (damaged bytes,
any text, odd values and overrides). Each is accepted or refused in one line naming the file, and where the
edit decides it (a damaged archive, a field of the wrong type, a key nobody knows, the same file written
again), the test asserts which."""

from __future__ import annotations

import math
import shutil
import tomllib
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import (ACCEPT, FUZZ, REFUSE, UNDECIDED, assert_verdict, damaged_bytes, scratch_dir,
                     zip_byte_damage)
from sbnn.config import ConfigError, load_config
from sbnn.data import dataset_loader
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


# Fields no check reads: any value is accepted.
UNREAD_CHECKPOINT_FIELDS = {"unknown", "world_size", "model_config", "torch_version"}
CHECKPOINT_TYPES = {"epoch": int, "global_step": int, "config": str, "model": dict, "history": list,
                    "input_shape": list, "num_classes": int, "optimizer": dict, "scheduler": dict, "rng": dict}
# Checked for their type only: their contents are read (and checked) when a run resumes from them.
RESUME_ONLY_FIELDS = {"optimizer", "scheduler", "rng"}


def expected_checkpoint_verdict(good: dict, key: str, value) -> str:
    """The verdict load_trained_model owes a checkpoint whose ``key`` now holds ``value`` (a JUNK_VALUES draw)."""
    if key in UNREAD_CHECKPOINT_FIELDS:
        return ACCEPT
    if key == "format":
        return ACCEPT if type(value) is int and value == good["format"] else REFUSE
    if not isinstance(value, CHECKPOINT_TYPES[key]) or isinstance(value, bool):
        return REFUSE
    if key in RESUME_ONLY_FIELDS:
        return ACCEPT
    if key == "global_step":
        return ACCEPT if value >= 0 else REFUSE
    if key == "input_shape" and value != good[key] and all(n >= 1 for n in value) \
            and math.prod(value) == math.prod(good[key]):
        return UNDECIDED   # the same number of inputs in another shape: whether the model takes it is its business
    # epoch (one history record per epoch), config (junk text: invalid TOML, or another model), model (junk
    # entries), history, input_shape and num_classes (the stored tensors no longer fit): all refused.
    return ACCEPT if type(value) is type(good[key]) and value == good[key] else REFUSE


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_checkpoint_damaged(trained_run, data):
    run = trained_run / "run"
    content = (run / "checkpoint.pt").read_bytes()
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    with scratch_dir() as folder:
        shutil.copyfile(run / "config.toml", folder / "config.toml")
        marker = folder / "payload-ran"
        # Byte damage last: hypothesis favours the first choices, and flipped bytes are undecided.
        how = data.draw(st.sampled_from(["field", "model tensor", "payload", "saved again", "bytes"]))
        if how == "bytes":
            expected, damaged = data.draw(zip_byte_damage(content))
            (folder / "checkpoint.pt").write_bytes(damaged)
        else:
            checkpoint = dict(good)
            expected = ACCEPT   # "saved again": the same dictionary, written anew
            if how == "field":
                key = data.draw(st.sampled_from(sorted(good) + ["unknown"]))
                checkpoint[key] = data.draw(JUNK_VALUES)
                expected = expected_checkpoint_verdict(good, key, checkpoint[key])
            elif how == "model tensor":   # every replacement is NaN, infinite, of another shape or no tensor
                model = dict(good["model"])
                model[data.draw(st.sampled_from(sorted(model)))] = data.draw(st.sampled_from(
                    [torch.full((2, 3), float("nan")), torch.zeros(7), torch.tensor(float("inf")), "text", None]))
                checkpoint["model"], expected = model, REFUSE
            elif how == "payload":   # weights_only unpickling refuses any global it does not know
                checkpoint[data.draw(st.sampled_from(sorted(good)))] = Payload(marker)
                expected = REFUSE
            torch.save(checkpoint, folder / "checkpoint.pt")
        model = assert_verdict(expected, RunFolderError, folder / "checkpoint.pt", load_trained_model, folder)
        assert not marker.exists()
        if model is not None and how != "bytes":   # nothing the model reads was edited: the trained weights
            assert model.state_dict().keys() == good["model"].keys()
            assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in good["model"].items())
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


MAX_TOML_INTEGER = (1 << 63) - 1
OVERRIDE_KEYS = {"data.steps": int, "train.seed": int, "train.epochs": int, "model.hidden": list, "train.lr": float}


def toml_value(text: str):
    """``text`` parsed as a TOML value, or None when it is none (tomllib raises, or recurses too deeply)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return None


def expected_value_verdict(kind: type | str, value) -> str:
    """The verdict load_config owes a field of type ``kind`` (int, float, str, list, or "option": a data set's
    own key) given ``value``: a value of another TOML type (a bool is not a number), an integer beyond 64 bits
    and a NaN or infinite float are refused; a value of the right type is undecided (its range, or the name
    it gives, is the field's business)."""
    if kind == "option":   # a data set's own option: only a scalar here, its value checked when the data loads
        return REFUSE if isinstance(value, (dict, list)) else UNDECIDED
    if kind in (int, float) and isinstance(value, bool):
        return REFUSE
    if kind is int:
        return UNDECIDED if type(value) is int and -MAX_TOML_INTEGER - 1 <= value <= MAX_TOML_INTEGER else REFUSE
    if kind is float:
        if type(value) is float:
            return UNDECIDED if math.isfinite(value) else REFUSE
        return UNDECIDED if type(value) is int else REFUSE
    return UNDECIDED if type(value) is kind else REFUSE


def shuffled_sections(data, text: str) -> str:
    """The same configuration written differently: each section's keys in another order, comments and blank
    lines added, spaces around ``=`` changed."""
    out: list[str] = []
    for block in text.strip().split("\n["):
        header, *lines = block.splitlines()
        lines = data.draw(st.permutations([line for line in lines if line.strip()]))
        out.append(("" if header.startswith("[") else "[") + header + "  # a comment")
        out += [line.replace(" = ", data.draw(st.sampled_from(["=", " = ", "   =\t"]))) for line in lines]
        out.append(data.draw(st.sampled_from(["", "# another comment", "\t"])))
    return "\n".join(out) + "\n"


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_config_damaged(trained_run, data):
    text = (trained_run / "tiny.toml").read_text()
    raw = tomllib.loads(text)
    how = data.draw(st.sampled_from(["value", "unknown key", "rewritten", "override", "value", "override", "bytes",
                                     "text"]))
    overrides: list[str] = []
    with scratch_dir() as folder:
        path = folder / "run.toml"
        (folder / "original.toml").write_text(text)
        # Damaged bytes and any text: undecided, since what is left may be valid TOML naming only some keys
        # (an empty file, a truncation at a line end), which the defaults complete.
        expected = UNDECIDED
        if how == "bytes":
            path.write_bytes(data.draw(damaged_bytes(text.encode())))
        elif how == "text":
            path.write_bytes(data.draw(st.text(max_size=300)).encode("utf-8", "surrogatepass"))
        elif how == "rewritten":
            path.write_text(shuffled_sections(data, text))
            expected = ACCEPT
        elif how == "unknown key":   # a key or section no part of the config knows
            lines = text.splitlines()
            headers = [index for index, line in enumerate(lines) if line.startswith("[")]
            index = data.draw(st.sampled_from(headers + [len(lines)]))
            lines.insert(index + 1, data.draw(st.sampled_from(["unknown_key = 1", "[unknown]\nkey = 1"]))
                         if index < len(lines) else "[unknown]\nkey = 1")
            path.write_text("\n".join(lines) + "\n")
            expected = REFUSE
        elif how == "value":
            lines = text.splitlines()
            section = ""
            keys = {}
            for index, line in enumerate(lines):
                if line.startswith("["):
                    section = line.strip("[]")
                elif "=" in line:
                    key = line.split("=")[0].strip()
                    options = dataset_loader(raw["data"]["name"]).options if section == "data" else ()
                    keys[index] = "option" if key in options else type(raw[section][key])
            index = data.draw(st.sampled_from(sorted(keys)))
            value = data.draw(TOML_VALUES)
            lines[index] = lines[index].split("=")[0] + "= " + value
            parsed = toml_value(value)
            expected = REFUSE if parsed is None else expected_value_verdict(keys[index], parsed)
            path.write_text("\n".join(lines) + "\n")
        else:
            path.write_text(text)
            section_key = data.draw(st.sampled_from(sorted(OVERRIDE_KEYS) + ["train.unknown_key"]))
            value = data.draw(TOML_VALUES)
            overrides = [f"{section_key}={value}"]
            parsed = toml_value(value)
            if section_key not in OVERRIDE_KEYS:
                expected = REFUSE
            elif not (value.strip().startswith("[") and parsed is None):   # a value too deeply nested is refused
                # --set takes a value that is no TOML as a plain string
                expected = expected_value_verdict(OVERRIDE_KEYS[section_key], value.strip() if parsed is None
                                                  else parsed)
            else:
                expected = REFUSE
        config = assert_verdict(expected, ConfigError, path, load_config, path, overrides)
        if how == "rewritten":
            assert config.to_dict() == load_config(folder / "original.toml").to_dict()
