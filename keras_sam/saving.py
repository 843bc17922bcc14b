"""Saving a SAM model: its own state, weight files, checkpoints and formats.

`SavedStateMixin` is mixed into `SAMModel`. What it adds to Keras's saving:

- the dropout seed states. Keras saves no `SeedGenerator` state
  (keras-team/keras#19796): restored from `save`, `save_weights`,
  `BackupAndRestore` or a `tf.train.Checkpoint`, a model would draw the masks
  of its first steps again. The wrapper saves its base's seed states with its
  own variables, and resumed training is bit for bit the uninterrupted one;
- a variant's per-weight state (`variant_state.PerWeightState`) in
  `tf.train.Checkpoint`s, which do not follow a list of variables; and, in
  `.keras` and weight files (so also `BackupAndRestore`), each replica's copy
  of state a variant keeps per replica under `MirroredStrategy` (Keras saves
  the first replica's only);
- weight files before the first step: the wrapper is built like its base, and
  `load_weights` on a freshly compiled model builds the optimizer first, so
  that the optimizer's state is restored too (Keras skips it until a first
  step has built the optimizer);
- a clear refusal of Keras's legacy HDF5 format, which leaves out the
  wrapper's state and cannot be loaded back.
"""

from __future__ import annotations

import contextlib

import keras

from keras_sam import _keras_internals as internals
from keras_sam.variant_state import PerWeightState

__all__ = ["SavedStateMixin"]

_SEED_KEY = "seed_state_"
_REPLICA_KEY = "replica_"
_EXTRA_KEYS = (_SEED_KEY, _REPLICA_KEY)


def holds_optimizer_state(filepath) -> bool:
    """Whether a weights file has optimizer variables (a `.keras` file: assumed).

    A file saved before the optimizer existed has none: building the
    optimizer for it would only earn Keras's "Skipping variable loading"
    warning, and an optimizer whose `build` copies the weights would copy
    the ones about to be replaced.
    """
    path = str(filepath)
    if not path.endswith(".weights.h5"):
        return path.endswith(".keras")
    import h5py  # a Keras dependency

    try:
        with h5py.File(path, "r") as file:
            return len(file.get("optimizer/vars", {})) > 0
    except OSError:  # not readable here: Keras reports it
        return False


class SavedStateMixin:
    """The saving half of `SAMModel` (see the module docstring)."""

    def save(self, filepath, *args, **kwargs):
        """As Keras's; what cannot be saved (the legacy HDF5 format `.h5`, a
        config that does not serialize) is refused before a file is opened."""
        if str(filepath).endswith((".h5", ".hdf5")):
            raise self._legacy_hdf5_error(f"Received: filepath={str(filepath)!r}.")
        self.get_config()  # raises for what cannot be saved, before Keras opens the file
        return super().save(filepath, *args, **kwargs)

    def save_weights(self, filepath, *args, **kwargs):
        self._build_with_base()
        return super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """As Keras's; a compiled model also gets its optimizer's state back."""
        self._build_with_base()
        compiled = getattr(self, "optimizer", None) is not None
        if self.built and compiled and holds_optimizer_state(filepath):
            self._build_optimizer()
        return super().load_weights(filepath, *args, **kwargs)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, state in enumerate(internals.seed_states(self)):
            store[f"{_SEED_KEY}{i}"] = state
        # A variant's state kept per replica (sync_perturbation=False under
        # MirroredStrategy): the other replicas' copies, beside Keras's one.
        for i, variable in enumerate(internals.own_variables(self)):
            for replica, copy in enumerate(internals.replica_copies(variable)[1:], start=1):
                store[f"{_REPLICA_KEY}{replica}_{i}"] = copy.numpy()

    def load_own_variables(self, store):
        extra = {key: store[key] for key in store.keys() if key.startswith(_EXTRA_KEYS)}
        super().load_own_variables({key: store[key] for key in store.keys() if key not in extra})
        for i, state in enumerate(internals.seed_states(self)):
            if f"{_SEED_KEY}{i}" in extra:  # absent from files of keras-sam 0.1.0
                state.assign(extra[f"{_SEED_KEY}{i}"])
        for i, variable in enumerate(internals.own_variables(self)):
            for replica, copy in enumerate(internals.replica_copies(variable)[1:], start=1):
                key = f"{_REPLICA_KEY}{replica}_{i}"
                if key in extra:  # saved with as many replicas
                    copy.assign(extra[key])

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":  # `tf.train.Checkpoint`, not SavedModel
            for i, state in enumerate(internals.seed_states(self)):
                children[f"{_SEED_KEY}{i}"] = state
            for per_weight in self._per_weight_states():
                for i, variable in enumerate(per_weight.variables or []):
                    children[f"{per_weight.name}_{i}"] = variable
        return children

    def _build_variant_state(self) -> None:
        """Creates a variant's per-weight state now, outside any traced step,
        if the base model's weights exist."""
        for state in self._per_weight_states():
            state.build()

    def _per_weight_states(self) -> list[PerWeightState]:
        """The `PerWeightState`s a variant keeps as attributes."""
        return [v for v in vars(self).values() if isinstance(v, PerWeightState)]

    def _legacy_hdf5_error(self, received: str) -> ValueError:
        return ValueError(
            f"{type(self).__name__} cannot be saved in Keras's legacy HDF5 format: "
            "it leaves out the wrapper's state (the dropout seeds, a variant's stored "
            f"state) and Keras cannot load such a file back. {received} Save a "
            "`.keras` file (`model.save('model.keras')`), or the weights alone with "
            "`model.save_weights('model.weights.h5')`."
        )

    def _check_not_legacy_hdf5(self):
        """Raises when Keras's legacy HDF5 writer asks for the config
        (`keras.saving.save_model(model, "model.h5")` skips `model.save`)."""
        if internals.legacy_config_requested():
            raise self._legacy_hdf5_error("(Keras's legacy HDF5 writer asked for the config.)")

    def _build_optimizer(self):
        """Builds the optimizer now, eagerly and in the strategy's scope, if it
        is not built yet: an optimizer whose `build` assigns values
        (ScheduleFreeAdamW copies the weights) loses them when built inside a
        traced step."""
        if not self.optimizer.built and self.trainable_variables:
            strategy = getattr(self, "distribute_strategy", None)
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self.optimizer.build(self.trainable_variables)

    def _build_with_base(self):
        """Once the base is built, builds the wrapper (a variant creates its
        state in `build`), so that weight files can be written and read
        before the first call, as with the base itself."""
        if self.built or not self.base_model.built:
            return
        try:  # functional and Sequential bases
            input_shape = keras.tree.map_structure(
                lambda t: tuple(t.shape), self.base_model.input
            )
        except (AttributeError, ValueError):  # a subclassed base, called before
            input_shape = (self.base_model.get_build_config() or {}).get("input_shape")
        if input_shape is not None:
            self.build(input_shape)
