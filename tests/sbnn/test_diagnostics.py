"""Tests of sbnn.diagnostics: exact gradients by enumeration, and the expected shape of estimator bias."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from sbnn.diagnostics import (
    DEFAULT_CONFIGS,
    EnumerableProblem,
    all_states,
    bias_table,
    compare_gradients,
    estimator_from_config,
    estimator_gradients,
    exact_gradient,
    format_table,
    linear_problem,
    network_problem,
    quadratic_problem,
)
from sbnn.cli.bias import add_bias_command
from sbnn.estimators import EstimatorConfig
from sbnn.layers import BayesLinear, NoisyBinaryUnits

torch.set_num_threads(1)

ST = EstimatorConfig("st")
IWST_HALF = EstimatorConfig("iwst", p=0.5)
AGR_SMALL_TAU = EstimatorConfig("agr", tau=0.01)
AGR_MID_TAU = EstimatorConfig("agr", tau=0.3)
SAMPLES = 20_000


def _bias(problem: EnumerableProblem, config: EstimatorConfig, samples: int = SAMPLES) -> dict[str, float]:
    _, exact = exact_gradient(problem)
    return compare_gradients(exact, estimator_gradients(problem, config, samples, seed=3))


# ---------------------------------------------------------------------------------------------------
# Exact expected loss and gradient
# ---------------------------------------------------------------------------------------------------


def test_all_states_enumerates_each_state_once():
    states = all_states(4)
    assert states.shape == (16, 4)
    assert len({tuple(row.tolist()) for row in states}) == 16


@pytest.mark.parametrize("build", [linear_problem, quadratic_problem, network_problem])
def test_exact_gradient_matches_finite_difference(build):
    problem = build(1)
    _, gradient = exact_gradient(problem)
    step = 1e-6
    offset = 0
    for parameter in problem.parameters:
        flat = parameter.data.view(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 5)):  # a few coordinates per tensor
            original = float(flat[index])
            with torch.no_grad():
                flat[index] = original + step
                upper = float(problem.expected_loss())
                flat[index] = original - step
                lower = float(problem.expected_loss())
                flat[index] = original
            finite_difference = (upper - lower) / (2 * step)
            assert abs(float(gradient[offset + index]) - finite_difference) < 1e-7 * (1 + abs(finite_difference))
        offset += flat.numel()
    assert offset == gradient.numel()


def test_exact_loss_matches_monte_carlo_of_sampled_loss():
    problem = network_problem(2)
    exact_loss, _ = exact_gradient(problem)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = torch.stack([problem.sampled_loss(ST, 2000, generator) for _ in range(10)])
    # 10 x 2000 replicates: the standard error of the mean loss is well below 0.01 here.
    assert abs(float(losses.mean()) - exact_loss) < 4 * float(losses.std()) / 10**0.5 + 1e-3


def test_problem_refuses_too_many_units():
    layer = BayesLinear(3, 17, dtype=torch.float64)
    with pytest.raises(ValueError, match="at most 16"):
        EnumerableProblem("big", "", torch.zeros(2, 3, dtype=torch.float64), [layer], [NoisyBinaryUnits()],
                          lambda states, index: states.sum(-1))


# ---------------------------------------------------------------------------------------------------
# The expected shape (docs/method.md#diagnostics)
# ---------------------------------------------------------------------------------------------------


def test_st_is_unbiased_for_a_linear_loss():
    result = _bias(linear_problem(0), ST)
    # ST's gradient of a linear loss is the same for every sample: exact up to rounding.
    assert result["relative_bias"] < 1e-10
    assert result["cosine"] > 1 - 1e-12
    # Any IW-ST(p) is unbiased there too, within Monte-Carlo error.
    iwst = _bias(linear_problem(0), IWST_HALF)
    assert iwst["relative_bias"] < 3 * iwst["relative_bias_se"]


def test_quadratic_loss_iwst_half_and_small_tau_agr_unbiased_st_biased():
    problem = quadratic_problem(0)
    st, iwst, agr = (_bias(problem, config) for config in (ST, IWST_HALF, AGR_SMALL_TAU))
    assert iwst["relative_bias"] < 3 * iwst["relative_bias_se"]
    # AGR at tau = 0.01 is IW-ST with p = Phi(0.01 z), a bias of order 0.004 z per unit.
    assert agr["relative_bias"] < 3 * agr["relative_bias_se"] + 0.01
    assert st["relative_bias"] > 10 * st["relative_bias_se"]
    assert st["relative_bias"] > 0.05


def test_agr_at_intermediate_tau_lies_between_st_and_iwst_half():
    problem = quadratic_problem(0)
    st, iwst, agr = (_bias(problem, config) for config in (ST, IWST_HALF, AGR_MID_TAU))
    assert iwst["relative_bias"] < agr["relative_bias"] < st["relative_bias"]
    assert st["cosine"] < agr["cosine"] < iwst["cosine"]
    # ... and its variance also lies in between.
    assert st["variance"] < agr["variance"] < iwst["variance"]


def test_iwst_half_variance_rises_for_rarely_firing_units():
    common, rare = quadratic_problem(0), quadratic_problem(0, threshold=1.5)
    assert rare.mean_firing_probability() < 0.05 < common.mean_firing_probability()

    def variance_over_st(problem):
        return _bias(problem, IWST_HALF, 5000)["relative_variance"] / _bias(problem, ST, 5000)["relative_variance"]

    assert variance_over_st(rare) > 2 * variance_over_st(common)


def test_estimator_gradients_are_deterministic_for_a_seed():
    problem = network_problem(0)
    first = estimator_gradients(problem, AGR_MID_TAU, 400, seed=11, groups=4)
    second = estimator_gradients(problem, AGR_MID_TAU, 400, seed=11, groups=4)
    other = estimator_gradients(problem, AGR_MID_TAU, 400, seed=12, groups=4)
    assert torch.equal(first.mean, second.mean) and torch.equal(first.variance, second.variance)
    assert not torch.equal(first.mean, other.mean)
    assert first.samples == 400


def test_bias_table_rows_and_format():
    rows = bias_table([linear_problem(0)], DEFAULT_CONFIGS[:2], samples=200, seed=0)
    assert [row["estimator"] for row in rows] == ["st", "iwst(p=0.5)"]
    text = format_table(rows)
    assert "iwst(p=0.5)" in text and "rel.bias" in text
    with pytest.raises(ValueError, match="samples"):
        bias_table([linear_problem(0)], DEFAULT_CONFIGS[:1], samples=1)


# ---------------------------------------------------------------------------------------------------
# Command line piece
# ---------------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sbnn")
    add_bias_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv: list[str]) -> tuple[int, str]:
    args = _parse(argv)
    output = io.StringIO()
    with redirect_stdout(output):
        code = args.handler(args)
    return code, output.getvalue()


def test_bias_command_json_parses_with_expected_keys():
    code, output = _run(["bias", "--tiny", "--samples", "40", "--seed", "1", "--json"])
    assert code == 0
    report = json.loads(output)
    assert {"rows", "samples", "seed", "problems"} <= set(report)
    names = {row["problem"] for row in report["rows"]}
    assert {"linear", "quadratic", "network"} <= names
    for row in report["rows"]:
        assert {"problem", "estimator", "cosine", "relative_bias", "relative_bias_se", "variance"} <= set(row)


def test_bias_command_text_output():
    code, output = _run(["bias", "--tiny", "--samples", "20"])
    assert code == 0 and "agr(tau=0.3)" in output and "cosine" in output


def test_bias_command_bad_input(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        _run(["bias"])
    with pytest.raises(ValueError, match="samples"):
        _run(["bias", "--tiny", "--samples", "1"])
    missing = tmp_path / "missing.toml"
    with pytest.raises(ValueError, match="no such file"):
        _run(["bias", str(missing)])
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nname = "digits"\n[train]\nestimator = "magic"\n')
    with pytest.raises(ValueError, match="estimator"):
        _run(["bias", str(bad)])
    bad.write_text('[data]\nname = "digits"\n[train]\nestimator = {method = "agr", tau = -1.0}\n')
    with pytest.raises(ValueError, match="tau"):
        _run(["bias", str(bad)])


def test_bias_command_with_config(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[data]\nname = "digits"\n[train]\nestimator = {method = "agr", tau = 0.5}\n')
    assert estimator_from_config(config) == EstimatorConfig("agr", tau=0.5)
    code, output = _run(["bias", str(config), "--samples", "20", "--json"])
    estimators = {row["estimator"] for row in json.loads(output)["rows"]}
    assert code == 0 and estimators == {"st", "iwst(p=0.5)", "agr(tau=0.5)"}
