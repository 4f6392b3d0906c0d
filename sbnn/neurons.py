"""Neuron models of the hidden layers: one registry, name -> how to build a layer of them.

Loihi runs CUBA neurons only, so a deployable neuron model is a CUBA neuron with particular parameters:
``"cuba_lif"`` (:class:`~sbnn.layers.CubaLif` with ``ModelConfig``'s decays) and ``"binary"``
(:class:`~sbnn.layers.NoisyBinaryUnits`, a CUBA neuron without memory, ``alpha = beta = 0``) are built in.
``ModelConfig.neuron`` picks one by name (``None``: ``"binary"`` for kind ``bnn`` and a binary ``resnet``,
else ``"cuba_lif"``).  The module a model builds reports its CUBA fields to ``SbnnModel.describe()``, so
export and hw_sim need nothing new.  Adding one is one builder plus one :func:`register_neuron` line
(docs/extending.md#neuron).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from torch import nn

from sbnn.layers import DEFAULT_ESTIMATOR, CubaLif, Mode, NoisyBinaryUnits
from sbnn.registry import Registry

if TYPE_CHECKING:
    from sbnn.models import ModelConfig


class NeuronOptions(NamedTuple):
    """What the model builder hands a neuron builder besides the shape and the config.

    Attributes:
        mode: the layer's first :class:`~sbnn.layers.Mode` (``"mean"`` for the surrogate baseline).
        surrogate_slope: the fast-sigmoid slope of the surrogate baseline; ``None`` for an SBNN.
        recurrent_kwargs: for a recurrent layer, the keyword arguments of its recurrent
            :class:`~sbnn.layers.BayesLinear` (prior, initial posterior, the model's generator); ``None``
            for a feed-forward one.
    """

    mode: Mode
    surrogate_slope: float | None
    recurrent_kwargs: dict[str, Any] | None


NeuronBuilder = Callable[[tuple[int, ...], "ModelConfig", NeuronOptions], nn.Module]


@dataclass(frozen=True)
class NeuronModel:
    """A registered neuron model of the hidden layers.

    Attributes:
        name: its name (``[model] neuron``).
        build: ``build(shape, config, options)``: one layer of these neurons for the per-example neuron
            shape ``(n,)`` or ``(C, H, W)``.  The module has the three modes (a
            :class:`~sbnn.layers.ModeAware`) and maps a :class:`~sbnn.layers.Preactivation`
            ``(batch, T, *shape)`` to spikes of that shape; ``describe()`` exports a
            :class:`~sbnn.layers.CubaLif` or :class:`~sbnn.layers.NoisyBinaryUnits`.
        spiking: whether the neurons keep state over time (a CUBA-LIF, with a voltage bias of its own and
            Gaussian membrane noise; ``describe()`` calls it ``"cuba_lif"``).  ``False``: memoryless units
            (``"binary"``), whose synapses carry the bias and which cannot be recurrent.
        description: one line for the documentation.
    """

    name: str
    build: NeuronBuilder
    spiking: bool
    description: str = ""


_REGISTRY: Registry[NeuronModel] = Registry("neuron model")


def register_neuron(model: NeuronModel, *, replace: bool = False) -> NeuronModel:
    """Make a neuron model known to ``ModelConfig.neuron`` by ``model.name``; returns it.
    A name already taken is refused unless ``replace``."""
    if not isinstance(model, NeuronModel):
        raise TypeError(f"register a NeuronModel, got {model!r}")
    return _REGISTRY.register(model.name, model, replace=replace)


def unregister_neuron(name: str) -> None:
    """Forget a registered neuron model (the built-in ones stay)."""
    _REGISTRY.unregister(name)


def neuron_names() -> tuple[str, ...]:
    """The registered neuron models' names, the built-in ones first."""
    return _REGISTRY.names()


def neuron_model(name: str) -> NeuronModel:
    """The registered :class:`NeuronModel` called ``name``."""
    return _REGISTRY.get(name)


# ----------------------------------------------------------------------------------------------------
# The built-in neuron models
# ----------------------------------------------------------------------------------------------------


def build_binary_units(shape: tuple[int, ...], config: ModelConfig, options: NeuronOptions) -> NoisyBinaryUnits:
    """Noisy binary units firing when the pre-activation exceeds ``config.binary_threshold``."""
    return NoisyBinaryUnits(config.binary_threshold, config.base_noise_std, config.estimator,
                            mode=options.mode, surrogate_slope=options.surrogate_slope)


def build_cuba_lif(shape: tuple[int, ...], config: ModelConfig, options: NeuronOptions, *,
                   current_decay: float | None = None, voltage_decay: float | None = None) -> CubaLif:
    """CUBA-LIF neurons with ``config``'s threshold and base noise, and its decays unless others are given
    (``alpha``, ``beta`` in [0, 1]); recurrent when ``options.recurrent_kwargs`` is set."""
    # The surrogate baseline's LIF never samples, so its estimator only has to pass CubaLif's check.
    estimator = config.estimator if config.estimator.noise == "gauss" else DEFAULT_ESTIMATOR
    return CubaLif(
        shape,
        current_decay=config.current_decay if current_decay is None else current_decay,
        voltage_decay=config.voltage_decay if voltage_decay is None else voltage_decay,
        threshold=config.threshold, base_noise_std=config.base_noise_std,
        recurrent=options.recurrent_kwargs is not None, recurrent_kwargs=options.recurrent_kwargs,
        estimator=estimator, mode=options.mode, surrogate_slope=options.surrogate_slope,
    )


register_neuron(NeuronModel("cuba_lif", build_cuba_lif, spiking=True,
                            description="CUBA-LIF with ModelConfig's current_decay and voltage_decay"))
register_neuron(NeuronModel("binary", build_binary_units, spiking=False,
                            description="noisy binary units: a CUBA neuron without memory"))

# The built-in neuron models (neuron_names() lists the registered ones, these and any added since).
NEURONS: tuple[str, ...] = neuron_names()
_REGISTRY.seal_built_ins()


__all__ = [
    "NEURONS",
    "NeuronBuilder",
    "NeuronModel",
    "NeuronOptions",
    "build_binary_units",
    "build_cuba_lif",
    "neuron_model",
    "neuron_names",
    "register_neuron",
    "unregister_neuron",
]
