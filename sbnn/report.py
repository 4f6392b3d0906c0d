"""``report.html``: one self-contained page (images embedded as PNG data URIs) from a pipeline result.

The page shows, in order: the summary (verification verdict, accuracy on the float model and on the
hardware model), the accuracy table, the exported networks (with what the quantiser clipped or clamped,
the hardware-vs-float accuracy check on the calibration data, and every export warning), the energy
table with per-layer bars, accuracy against energy per
exported network, training curves, a spike raster of one test sample per layer, firing rates per layer,
the reliability diagram of the ensemble, and the predictive entropy of the hardware ensemble on correct
and wrong test samples.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from .results import ReportDocument

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #176b2c; font-weight: bold; } .bad { color: #a11; font-weight: bold; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
"""


def _figure_to_data_uri(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if isinstance(c, (int, float)) or c is None
                                    else f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _training_figure(result: ReportDocument):
    """Losses and accuracies per epoch (``training.history``), or None without a history."""
    import matplotlib.pyplot as plt

    history = result.get("training", {}).get("history", [])
    if not history:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = [h["epoch"] for h in history]
    for key, label in (("nll", "NLL"), ("kl_term", "β·KL/N"), ("aux", "aux")):
        values = [h.get("loss", {}).get(key) for h in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", label=label)
    ax_loss.set_xlabel("epoch"); ax_loss.set_title("training losses (per example)"); ax_loss.legend()
    for split, kind in (("test", "mean"), ("test", "noisy"), ("test", "ensemble"), ("train", "mean")):
        values = [h.get(split, {}).get(kind, {}).get("accuracy") for h in history]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, values, marker="o", label=f"{split} {kind}")
    ax_acc.set_xlabel("epoch"); ax_acc.set_title("accuracy"); ax_acc.legend(fontsize=8)
    return fig


def _energy_figure(result: ReportDocument):
    """Loihi and equivalent-ANN energy per layer of the posterior mean export (log scale)."""
    import matplotlib.pyplot as plt

    energy = result.get("energy", {}).get("mean")
    if not energy:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    layers = energy["layers"]
    names = [f"L{l['layer']} {l['kind']}" for l in layers]
    ax.bar(np.arange(len(layers)) - 0.2, [l["energy_uj"]["loihi"] for l in layers], 0.4, label="Loihi (SNN)")
    ax.bar(np.arange(len(layers)) + 0.2, [l["energy_uj"]["ann_mac_45nm"] for l in layers], 0.4,
           label="equivalent ANN (45 nm fp32)")
    ax.set_xticks(range(len(layers)), names); ax.set_ylabel("µJ per inference"); ax.set_yscale("log")
    ax.set_title("energy per layer"); ax.legend(fontsize=8)
    return fig


def _accuracy_energy_figure(result: ReportDocument):
    """hw_sim accuracy against the Loihi energy proxy, one point per export."""
    import matplotlib.pyplot as plt

    exports = result.get("exports", [])
    if not exports:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for entry in exports:
        if entry.get("accuracy_hw") is not None and entry.get("energy_uj"):
            ax.scatter(entry["energy_uj"]["loihi"], entry["accuracy_hw"], s=40)
            ax.annotate(entry["name"], (entry["energy_uj"]["loihi"], entry["accuracy_hw"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("Loihi energy proxy (µJ per inference)"); ax.set_ylabel("hw_sim test accuracy")
    ax.set_title("accuracy against energy")
    return fig


def _raster_figure(result: ReportDocument):
    """The spikes of one test sample, one panel per layer (step against neuron)."""
    import matplotlib.pyplot as plt

    raster = result.get("raster")
    if not raster:
        return None
    layers = raster["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for ax, spikes, k in zip(axes[0], layers, range(len(layers))):
        spikes = np.asarray(spikes)
        t, n = np.nonzero(spikes)
        ax.scatter(t, n, s=2, marker="|", color="k")
        ax.set_xlim(0, spikes.shape[0]); ax.set_ylim(-0.5, spikes.shape[1] - 0.5)
        ax.set_title(f"layer {k}"); ax.set_xlabel("step")
    axes[0][0].set_ylabel("neuron")
    fig.suptitle(f"spike raster, test sample {raster.get('sample', 0)} (hw_sim)")
    return fig


def _rates_figure(result: ReportDocument):
    """Firing rate per layer (spikes per neuron per step)."""
    import matplotlib.pyplot as plt

    rates = result.get("firing_rates")
    if not rates:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(len(rates)), rates)
    ax.set_xticks(range(len(rates)), [f"L{k}" for k in range(len(rates))])
    ax.set_ylabel("spikes / neuron / step"); ax.set_title("firing rate per layer (hw_sim, test set)")
    return fig


def _reliability_figure(result: ReportDocument):
    """The reliability diagram (accuracy against confidence per non-empty bin) with its ECE."""
    import matplotlib.pyplot as plt

    calibration = result.get("calibration")
    if not calibration:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    centers = np.asarray(calibration["bin_centers"]); accuracy = np.asarray(calibration["bin_accuracy"], dtype=float)
    counts = np.asarray(calibration["bin_counts"])
    ax.bar(centers[counts > 0], accuracy[counts > 0], width=1.0 / len(centers), edgecolor="k", alpha=0.7)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("confidence"); ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, {calibration.get('name', 'ensemble')} (ECE {calibration.get('ece', 0):.3f})")
    return fig


def _entropy_figure(result: ReportDocument):
    """Histograms of the predictive entropy (nats) on correct and on wrong test samples."""
    import matplotlib.pyplot as plt

    entropy = result.get("entropy")
    if not entropy or not (entropy.get("correct") or entropy.get("wrong")):
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(0, max([1e-6] + list(entropy.get("correct", [])) + list(entropy.get("wrong", []))), 20)
    ax.hist(entropy.get("correct", []), bins=bins, alpha=0.6, label="correct", density=True)
    ax.hist(entropy.get("wrong", []), bins=bins, alpha=0.6, label="wrong", density=True)
    ax.set_xlabel("predictive entropy (nats)"); ax.set_title("hardware ensemble uncertainty"); ax.legend()
    return fig


# The figures in the order they are drawn, by the key render() places them under; each returns a
# matplotlib figure, or None when the result lacks its data.
FIGURES = (("training", _training_figure), ("energy", _energy_figure), ("accuracy_energy", _accuracy_energy_figure),
           ("raster", _raster_figure), ("rates", _rates_figure), ("reliability", _reliability_figure),
           ("entropy", _entropy_figure))


def _plots(result: ReportDocument) -> dict[str, str]:
    """Every figure the result has the data for, as PNG data URIs by key."""
    import matplotlib
    matplotlib.use("Agg")

    figures = {}
    for key, draw in FIGURES:
        figure = draw(result)
        if figure is not None:
            figures[key] = _figure_to_data_uri(figure)
    return figures


def _saturation_text(saturation: dict | None) -> str:
    """``3 weights, 1 threshold`` (non-zero counts only), ``none``, or ``—`` for an export that records none."""
    if saturation is None:
        return "—"
    counts = [f"{count} {kind.replace('_', ' ')}" for kind, count in saturation.items() if count]
    return ", ".join(counts) or "none"


def _accuracy_check_text(check: dict | None) -> str:
    if not check:
        return "—"
    text = f"{check['hardware_accuracy']:.1%} vs {check['float_accuracy']:.1%} ({check['samples']} samples)"
    return text + (" FLAGGED" if check.get("flagged") else "")


PROVENANCE_META = re.compile(r'<meta name="sbnn-provenance" content="([^"]*)">')


def recorded_report_inputs(path: str | os.PathLike) -> dict | None:
    """The inputs a ``report.html`` records it was made from (see :func:`write_report`), or None."""
    try:
        with open(path, encoding="utf-8") as file:
            head = file.read(1 << 16)
        found = PROVENANCE_META.search(head)
        inputs = json.loads(html.unescape(found.group(1))) if found else None
    except (OSError, ValueError):
        return None
    return inputs if isinstance(inputs, dict) else None


def _head(result: ReportDocument, provenance: dict | None) -> list[str]:
    meta = ("" if provenance is None else
            f'<meta name="sbnn-provenance" content="{html.escape(json.dumps(provenance, allow_nan=False), quote=True)}">')
    return [f"<!DOCTYPE html><html><head><meta charset='utf-8'>{meta}<title>sbnn report — {html.escape(result.get('name', ''))}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>sbnn report: {html.escape(result.get('name', ''))}</h1>",
            f"<p class='note'>run folder {html.escape(str(result.get('run_dir', '')))}</p>"]


def _verification_section(result: ReportDocument) -> list[str]:
    """The hw_sim-vs-Lava verdict, or why Lava did not run."""
    verify = result.get("verify") or {}
    if verify:
        verdict = ("<span class='ok'>bit-exact</span>" if verify.get("bit_exact") else "<span class='bad'>DIFFERENT</span>")
        detail = (f"{verify.get('spikes_compared')} spikes and {verify.get('states_compared')} u/v values compared on "
                  f"{verify.get('samples')} test samples")
        if not verify.get("bit_exact") and verify.get("first_difference"):
            detail += f"; first difference: {html.escape(json.dumps(verify['first_difference']))}"
        return [f"<p>hw_sim vs Lava: {verdict} — {detail}.</p>"]
    if result.get("lava_error"):
        return [f"<p>hw_sim vs Lava: <span class='bad'>not verified</span> — "
                f"{html.escape(str(result['lava_error']))}.</p>"]
    return []


def _accuracy_section(result: ReportDocument) -> list[str]:
    accuracy = result.get("accuracy", {})
    rows = [[label, accuracy.get(key)] for key, label in (
        ("float_mean", "float model, posterior mean (deterministic)"),
        ("float_noisy", "float model, posterior mean with noisy units (MC average)"),
        ("float_ensemble", "float model, K posterior samples (ensemble)"),
        ("quantised_float", "quantised network, float arithmetic, no delay"),
        ("hw_mean", "quantised posterior mean on hw_sim (Loihi arithmetic)"),
        ("hw_ensemble", "K quantised posterior samples on hw_sim (ensemble)"),
        ("lava_subset", f"Lava, posterior mean, {accuracy.get('lava_subset_size', 0)} test samples"),
        ("hw_subset", "hw_sim on the same Lava subset"))]
    return ["<h2>Accuracy</h2>", _table(["model", "test accuracy"], rows)]


def _exports_section(result: ReportDocument) -> list[str]:
    """Each export's accuracy, energy, saturation and calibration check, and every export warning."""
    exports = result.get("exports", [])
    if not exports:
        return []
    parts = ["<h2>Exported networks</h2>",
             _table(["export", "hw_sim accuracy", "Loihi µJ / inference", "synops / inference", "netx-exact",
                     "clipped / clamped", "calibration: hardware vs float"],
                    [[e["name"], e.get("accuracy_hw"), (e.get("energy_uj") or {}).get("loihi"),
                      e.get("synops"), str(e.get("netx_exact")), _saturation_text(e.get("saturation")),
                      _accuracy_check_text(e.get("accuracy_check"))] for e in exports])]
    warnings = [(e["name"], w) for e in exports for w in e.get("warnings", [])]
    if warnings:
        # Saturation and accuracy loss are shown, never only counted: each warning of each export.
        parts.append("<p class='bad'>Export warnings</p><ul>" + "".join(
            f"<li>{html.escape(name)}: {html.escape(str(w))}</li>" for name, w in warnings) + "</ul>")
    else:
        parts.append("<p class='note'>No export warnings: nothing was clipped or clamped, every layer's u and v "
                     "kept 2× headroom on the calibration data, and the hardware kept the float model's "
                     "accuracy within the margin.</p>")
    return parts


def _energy_section(result: ReportDocument) -> list[str]:
    """The posterior mean export's energy proxies, per-layer activity and the constants used."""
    energy = result.get("energy", {}).get("mean")
    if not energy:
        return []
    return ["<h2>Energy (posterior mean export, per inference)</h2>",
            _table(["proxy", "µJ", "definition"],
                   [[name, value, energy["proxies"][name]] for name, value in energy["energy_uj"].items()]),
            _table(["layer", "kind", "input spikes", "synops", "neuron updates", "output spikes",
                    "firing rate", "ANN MACs / step"],
                   [[l["layer"], l["kind"], l["input_spikes"], l["synops"], l["neuron_updates"],
                     l["output_spikes"], l["firing_rate"], l["ann_macs_per_step"]] for l in energy["layers"]]),
            "<p class='note'>Constants: " + "; ".join(
                f"{html.escape(k)} {v['joules'] * 1e12:g} pJ ({html.escape(v['source'])})"
                for k, v in energy["constants"].items()) + "</p>"]


FIGURE_TITLES = {"energy": "Energy per layer", "accuracy_energy": "Accuracy against energy", "training": "Training",
                 "raster": "Spike raster", "rates": "Firing rates", "reliability": "Calibration",
                 "entropy": "Uncertainty of the hardware ensemble"}


def _figures_section(figures: dict[str, str]) -> list[str]:
    return [f"<h2>{title}</h2><div class='figs'>{_img(figures[key], title)}</div>"
            for key, title in FIGURE_TITLES.items() if key in figures]


def _timings_section(result: ReportDocument) -> list[str]:
    timings = result.get("timings")
    if not timings:
        return []
    return ["<h2>Stage times</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in timings.items()])]


def render(result: ReportDocument, provenance: dict | None = None) -> str:
    """The HTML page for a pipeline result (see :mod:`sbnn.pipeline`; any section may be missing, and is then
    left out); ``provenance`` (what the page was made from) goes into a ``<meta name="sbnn-provenance">``
    tag, read back by the pipeline."""
    figures = _plots(result)
    parts = [*_head(result, provenance), *_verification_section(result), *_accuracy_section(result),
             *_exports_section(result), *_energy_section(result), *_figures_section(figures),
             *_timings_section(result)]
    # Lets a headless browser (the report test) read back how many images decoded.
    parts.append("<script>window.addEventListener('load', () => { const images = [...document.images]; "
                 "document.body.dataset.imagesTotal = images.length; document.body.dataset.imagesLoaded = "
                 "images.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: ReportDocument, path: str | os.PathLike, *, provenance: dict | None = None) -> Path:
    """Render and write ``report.html`` atomically; ``provenance`` is recorded in the page (see :func:`render`)."""
    from safeio.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(render(result, provenance), encoding="utf-8")
    return path
