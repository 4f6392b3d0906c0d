"""Other libraries' NIR files as their exporters write them today (docs/formats.md#nir-peers).

NIR carries no time step, and each library's exporter follows its own conventions, some of them wrong.
Before :func:`export.nir_io.from_nir` maps a graph, :func:`resolve_dt` settles dt and
:func:`peer_corrections` recognises the known exporters by their graph's signature:

* the graph's own metadata ``dt`` (our files): taken; a different ``--dt`` is refused;
* the unit-gain convention ``r = τ_mem/dt`` (``w_in = τ_syn/dt``; ``r = 1/dt`` for ``IF``), which
  snnTorch's exporter writes with dt = 1e-4 s and Sinabs's ``IF`` with r = 1 (one step = one time unit):
  dt is inferred from it, and a different ``--dt`` is refused;
* norse's ``to_nir`` (1.1.0) writes ``τ·dt`` instead of τ and ``w_in = 1``: recognised from ``r = w_in = 1``
  with every time constant shorter than the given dt, and corrected (τ/dt, w_in = τ_syn/dt) with a note;
* Sinabs's ``to_nir`` (3.1) writes ``LIF``/``LI`` (its ``LIF``/``ExpLeak``) with τ in steps, ``r = 1`` and
  ``v_leak = 0`` for a neuron that decays by exactly ``e^(−1/τ)`` a step: recognised (no ``--dt``, or
  ``--dt 1``), dt = 1 step, and the decay mapped exactly (τ → 1/(1 − e^(−1/τ))) with a note;
* Rockpool's ``to_nir`` (3.1) writes ``r = τ·e^(−dt/τ)/dt``, leaves ``w_in = 1`` and drops the bias:
  recognised and refused, saying why (the bias is lost, the reset differs).

Nothing here guesses: a graph that fits no convention still needs ``--dt``.
"""

from __future__ import annotations

import numpy as np

SIGNIFICANT = 6            # float32 files: dt inferred to 6 significant digits
AGREEMENT = 1e-5           # relative spread allowed between the dt values a file implies (float32 rounding)
SNNTORCH_DT = 1e-4         # the dt snnTorch's exporter hard-codes


def _values(node, name: str) -> np.ndarray | None:
    value = getattr(node, name, None)
    if value is None:
        return None
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _neurons(graph) -> list[tuple[str, object]]:
    return [(type(node).__name__, node) for node in graph.nodes.values()
            if type(node).__name__ in ("CubaLIF", "CubaLI", "LIF", "LI", "IF", "I")]


def single_number(value, what: str) -> float:
    """``value`` as one float; an error when it holds several values or none (a damaged file)."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, found {value!r}") from None
    if array.size != 1:
        raise ValueError(f"{what} must be one number, found {array.size} values")
    return float(array[0])


def unit_gain_dt(graph) -> float | None:
    """The dt implied by the unit-gain convention (``r = τ_mem/dt``, ``w_in = τ_syn/dt``, ``r = 1/dt`` for
    ``IF``/``I``), in seconds, when every neuron node agrees on one and every decay factor it gives lies in
    (0, 1); else None. Rounded to :data:`SIGNIFICANT` digits (exporters store float32)."""
    implied, taus = [], []
    for kind, node in _neurons(graph):
        r = _values(node, "r")
        if r is None or r.size == 0 or np.any(r <= 0):
            return None
        if kind in ("IF", "I"):
            implied.append(1.0 / r)
            continue
        tau = _values(node, "tau_mem" if kind.startswith("Cuba") else "tau")
        implied.append(tau / r)
        taus.append(tau)
        if kind.startswith("Cuba"):
            tau_syn, w_in = _values(node, "tau_syn"), _values(node, "w_in")
            if w_in is None or np.any(w_in <= 0):
                return None
            implied.append(tau_syn / w_in)
            taus.append(tau_syn)
    if not implied:
        return None
    implied = np.concatenate([np.broadcast_to(value, value.shape) for value in implied])
    if not np.all(np.isfinite(implied)) or implied.min() <= 0 or implied.max() / implied.min() - 1 > AGREEMENT:
        return None
    dt = float(f"{float(np.median(implied)):.{SIGNIFICANT}g}")
    if taus and np.concatenate(taus).min() <= dt * (1 + AGREEMENT):   # a decay factor of 0 or less
        return None
    return dt


def resolve_dt(graph, dt: float | None) -> tuple[float, list[str]]:
    """dt in seconds for ``graph``: its metadata's, else the one its parameters imply, else ``dt`` (the
    user's ``--dt``); an error when the user's contradicts the file's, or when there is none at all."""
    found = [graph.metadata.get("dt")] + [getattr(node, "metadata", {}).get("dt") for node in graph.nodes.values()]
    stored = next((value for value in found if value is not None), None)
    given = None if dt is None else _checked_dt(dt, "--dt")
    if stored is not None:
        stored = _checked_dt(single_number(stored, "the dt in the graph's metadata"), "the graph's metadata dt")
        _refuse_contradiction(stored, given, "the graph's metadata says")
        return stored, []
    implied = unit_gain_dt(graph)
    if implied is not None:
        _refuse_contradiction(implied, given, "its neurons' r = τ/dt (the unit-gain convention) imply")
        return implied, [f"dt = {implied:g} s inferred from r = τ/dt (the graph carries no dt)"]
    if sinabs_signature(graph) and (given is None or given == 1.0):
        return 1.0, ["dt = 1 (one step) taken from Sinabs's convention (τ in steps, r = 1; the graph carries "
                     "no dt)"]
    _refuse_rockpool(graph)
    if given is None:
        if norse_signature(graph):
            raise ValueError(f"{NORSE} and carries no dt; give --dt with the dt of the norse model "
                             f"(to_nir's default is 0.001 s)")
        raise ValueError("the graph carries no dt in its metadata; give it with --dt SECONDS")
    return given, []


def _checked_dt(value: float, what: str) -> float:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"dt must be a positive, finite number of seconds, found {value} ({what})")
    return float(value)


def _refuse_contradiction(file_dt: float, given: float | None, source: str) -> None:
    if given is not None and not np.isclose(given, file_dt, rtol=1e-4, atol=0.0):
        raise ValueError(f"--dt {given:g} contradicts the file: {source} dt = {file_dt:g} s "
                         f"(give --dt {file_dt:g}, or leave it out)")


NORSE_TAU_MAX = 1e-2      # norse writes τ·dt: with its default dt = 1 ms, below 10 ms for any τ under 10 s
NORSE = ("the graph looks like norse's to_nir output (r = w_in = 1, time constants written as τ·dt, "
         "a bug of norse 1.1.0)")


def norse_signature(graph) -> bool:
    """r = 1 on every LIF/LI/CubaLIF node, w_in = 1 on every CubaLIF, time constants under
    :data:`NORSE_TAU_MAX` (τ·dt), Affine synapses only."""
    neurons = [(kind, node) for kind, node in _neurons(graph) if kind not in ("IF", "I")]
    if not neurons or any(type(node).__name__ == "Linear" for node in graph.nodes.values()):
        return False
    for kind, node in neurons:
        if not np.all(_values(node, "r") == 1):
            return False
        if kind.startswith("Cuba") and not np.all(_values(node, "w_in") == 1):
            return False
        if np.any(_values(node, "tau_mem" if kind.startswith("Cuba") else "tau") >= NORSE_TAU_MAX):
            return False
    return True


def sinabs_signature(graph) -> bool:
    """Sinabs's ``to_nir``: ``Affine`` synapses only, neurons ``LIF``/``LI``/``IF`` with at least one
    ``LIF``/``LI``, ``r = 1`` everywhere, ``v_leak = 0`` and every τ ≥ 1 (time constants in steps)."""
    neurons = _neurons(graph)
    if not neurons or any(type(node).__name__ == "Linear" for node in graph.nodes.values()):
        return False
    if any(kind not in ("LIF", "LI", "IF") for kind, _ in neurons) or all(kind == "IF" for kind, _ in neurons):
        return False
    for kind, node in neurons:
        r = _values(node, "r")
        if r is None or not np.all(r == 1):
            return False
        if kind != "IF" and (not np.all(_values(node, "v_leak") == 0) or not np.all(_values(node, "tau") >= 1)):
            return False
    return True


SINABS = ("written by Sinabs's to_nir (τ in steps, r = 1, v_leak = 0): the decay is Sinabs's exact e^(−1/τ) a "
          "step, not NIR's Euler 1 − 1/τ (give --dt SECONDS to read the file as NIR's Euler form instead); "
          "the input gain is NIR's r·(1 − e^(−1/τ)), Sinabs's norm_input=True (its LIF default): a layer built "
          "with norm_input=False (ExpLeak's default) has gain 1: for a hidden layer set r = 1/(1 − e^(−1/τ)) in "
          "the file (a read-out's predictions do not change); its exporter also drops tau_syn, so a LIF with "
          "synaptic dynamics does not import faithfully")


def _sinabs_correction(graph) -> list[str]:
    """Rewrite Sinabs's τ (steps) as the τ whose Euler step with dt = 1 is ``e^(−1/τ)``:
    τ' = 1/(1 − e^(−1/τ)); ``r = 1`` then gives the gain ``1 − e^(−1/τ)`` of NIR's equation solved exactly
    over one step."""
    for kind, node in _neurons(graph):
        if kind in ("LIF", "LI"):
            node.tau = 1.0 / -np.expm1(-1.0 / np.asarray(node.tau, dtype=np.float64))
    return [SINABS]


def rockpool_dt(graph) -> float | None:
    """The dt (s) of Rockpool's convention ``r = τ_mem·e^(−dt/τ_mem)/dt`` with ``w_in = 1``, when every
    CubaLIF node agrees on one; None otherwise (or without CubaLIF nodes)."""
    from scipy.special import lambertw

    cuba = [node for kind, node in _neurons(graph) if kind == "CubaLIF"]
    if not cuba:
        return None
    implied = []
    for node in cuba:
        r, tau, w_in = _values(node, "r"), _values(node, "tau_mem"), _values(node, "w_in")
        if np.any(r <= 0) or not np.all(w_in == 1) or np.all(r == 1):
            return None
        implied.append(tau * np.real(lambertw(1.0 / r)))   # r·dt = τ·e^(−dt/τ)  ⇔  dt/τ = W(1/r)
    implied = np.concatenate(implied)
    if implied.min() <= 0 or implied.max() / implied.min() - 1 > AGREEMENT:
        return None
    return float(f"{float(np.median(implied)):.{SIGNIFICANT}g}")


def _refuse_rockpool(graph) -> None:
    rockpool = rockpool_dt(graph)
    if rockpool is not None:
        raise ValueError(f"the graph looks like Rockpool's to_nir output (r = τ·e^(−dt/τ)/dt with dt = "
                         f"{rockpool:g} s, w_in = 1), which cannot be imported faithfully: Rockpool 3.1 steps "
                         f"I ← e^(−dt/τ_syn)·(I + x), v ← e^(−dt/τ_mem)·v + I + b, but writes w_in = 1 and "
                         f"r for other gains, v_leak = 0 whatever the bias b, and LIFTorch subtracts the threshold "
                         f"per spike (several a step), which Loihi's reset to zero cannot reproduce")


def peer_corrections(graph, dt: float) -> list[str]:
    """Correct (in place, on the caller's copy) or refuse what a known exporter wrote wrongly in ``graph``,
    for the dt already resolved; the notes say what was changed and why."""
    if graph.metadata.get("dt") is not None:
        return []
    if dt == 1.0 and sinabs_signature(graph):
        return _sinabs_correction(graph)
    neurons = [(kind, node) for kind, node in _neurons(graph) if kind not in ("IF", "I")]
    if not norse_signature(graph) or not all(
            np.all(_values(node, name) < dt) for kind, node in neurons
            for name in (("tau_syn", "tau_mem") if kind.startswith("Cuba") else ("tau",))):
        return _snntorch_notes(graph, dt) + _sinabs_iaf_notes(graph, dt)
    for kind, node in neurons:
        for name in (("tau_syn", "tau_mem") if kind.startswith("Cuba") else ("tau",)):
            setattr(node, name, np.asarray(getattr(node, name), dtype=np.float64) / dt)
        if kind.startswith("Cuba"):
            node.w_in = np.asarray(node.tau_syn, dtype=np.float64) / dt
    for kind, node in _neurons(graph):
        if kind == "IF":   # norse's IAFCell adds its input in full (v ← v + x): NIR's gain r·dt = 1
            node.r = np.asarray(node.r, dtype=np.float64) / dt
    return [f"{NORSE}: corrected to τ = written τ / dt, w_in = τ_syn/dt (and r = 1/dt for IF) for dt = {dt:g} s, "
            f"which reproduces norse's own step; re-export once norse's to_nir writes 1/tau_mem_inv. norse's "
            f"to_nir does not write v_reset: a model whose cells reset to v_reset ≠ 0 computes differently (and norse "
            f"starts v at v_leak, NIR and Loihi at 0)"]


def _sinabs_iaf_notes(graph, dt: float) -> list[str]:
    """Sinabs's exporter writes its ``IAF`` as ``IF`` with r = 1 (dt = 1 step) and no trace of its spike and
    reset functions."""
    neurons = _neurons(graph)
    if dt != 1.0 or not neurons or any(kind != "IF" for kind, _ in neurons) \
            or any(type(node).__name__ == "Linear" for node in graph.nodes.values()):
        return []
    return ["IF neurons with r = 1 (as Sinabs's to_nir writes its IAF) are imported as Loihi's: one spike a "
            "step and reset to 0 (Sinabs's SingleSpike and MembraneReset); the file does not record spike_fn or "
            "reset_fn, and a model built with Sinabs's defaults (MultiSpike, MembraneSubtract) computes "
            "differently"]


def _snntorch_notes(graph, dt: float) -> list[str]:
    """snnTorch's exporter: dt = 1e-4 s with the unit-gain convention and an explicit zero reset."""
    if not np.isclose(dt, SNNTORCH_DT, rtol=1e-4) or unit_gain_dt(graph) is None:
        return []
    if not any(kind in ("CubaLIF", "LIF") for kind, _ in _neurons(graph)):
        return []
    return ["written by snnTorch's exporter (dt = 1e-4 s): it writes a zero reset whatever the neurons' "
            "reset_mechanism; a model trained with snnTorch's default (reset_mechanism='subtract', "
            "reset_delay=True) computes differently from this import, so train with "
            "reset_mechanism='zero', reset_delay=False for a faithful import"]
