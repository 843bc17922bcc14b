"""`SAMModel`: a `keras.Model` whose `fit` runs Sharpness-Aware Minimization.

One training step, for each piece of the batch (one piece unless
`num_batch_splits > 1`):

1. the clean pass at w, exactly Keras's own step: forward with
   `training=True`, `compute_loss` (with `model.losses`), `scale_loss`, the
   gradient g. It updates BatchNorm statistics, metrics and the loss tracker;
2. the ascent ε̂ from g (`keras_sam.perturbation`);
3. the perturbed pass at w + ε̂, inside a `keras.StatelessScope` that reads
   every trainable variable as w + ε̂ without assigning it. Its state updates
   (BatchNorm, per-output loss trackers) are captured and dropped; only the
   dropout seed state is written back, so random masks keep advancing;
4. the optimizer applies the perturbed gradient to w. The weights are never
   assigned w + ε̂, so w is exactly the w of pass 1, bit for bit.

Variants change one hook each: `_ascent` (the ε̂ rule), `_descent_direction`
(how the two gradients combine) or `_sam_gradients` (which passes run).
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf
from keras.src import backend as keras_backend
from keras.src.backend.common import global_state as keras_global_state
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.data_adapters.data_adapter_utils import (
    unpack_x_y_sample_weight,
)

from keras_sam import _validation as check
from keras_sam import distribution
from keras_sam.gradient_math import all_finite
from keras_sam.perturbation import perturbation, validate_p

__all__ = ["SAMModel"]


# Without XLA, TensorFlow's graph executor chooses among ready ops by node
# order, which follows op names, and Keras names a model's ops after the model.
# Measured on a small CNN: renaming a SAMModel moved its peak memory by up to
# 23 MiB, because some filter-gradient kernels of the second pass ran late and
# kept their inputs alive. Under one fixed scope the passes and the ascent keep
# the same order relative to the rest of the step whatever the model is called.
_PASS_SCOPE = "training_pass"

# Each m-sharpness piece adds its own two passes to the traced training graph,
# so tracing time grows with the number of pieces (measured: a minute for 60
# pieces of a small MLP, no end in sight for 10**6). 128 pieces cut a batch of
# 128 into single samples, the smallest m the SAM paper studies.
MAX_BATCH_SPLITS = 128


def _holds_optimizer_state(filepath) -> bool:
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


def _first_tensor(structure):
    return next(t for t in tf.nest.flatten(structure) if t is not None)


def _slice_rows(structure, start, stop):
    return tf.nest.map_structure(
        lambda t: None if t is None else t[start:stop], structure
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(keras.Model):
    """Wraps a Keras model so that `fit` trains it with SAM.

    `predict`, `evaluate`, `__call__`, `summary` and `export` are the base
    model's; only `fit` changes. Works with any Keras optimizer, loss, metric,
    callback, `jit_compile`, and `tf.distribute` strategy.

    Example:

    >>> import keras, numpy as np
    >>> from keras_sam import SAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = SAMModel(base, rho=0.05)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1),
    ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8,), "int32")
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss', 'sharpness']

    Args:
        base_model: the `keras.Model` to train (Sequential, functional or
            subclassed). Available as `.base_model`.
        rho: neighbourhood radius ρ, a float with 0 <= rho <= 1e4 or a
            `keras.optimizers.schedules.LearningRateSchedule` evaluated at the
            optimizer's iteration. `rho=0` is the base optimizer's plain step.
            Settable during training (`model.rho = 0.1`) without retracing.
            Defaults to `0.05`.
        p: norm of the ball, 1 < p <= inf; `float("inf")` is sign ascent.
            Defaults to `2`.
        adaptive: ASAM's scale-invariant ball (use a rho about 10x SAM's).
            Defaults to `False`.
        eta: ASAM's η in T_w = |w| + η. Defaults to `0.01`.
        num_batch_splits: m-sharpness: cut each replica's batch into this many
            contiguous pieces, each with its own ε̂, 1 to 128 (each piece's
            passes are built into the training graph). A batch with fewer
            rows is cut into one-row pieces. Defaults to `1`.
        sync_perturbation: under a `tf.distribute` strategy, all-reduce the
            first gradient so every replica uses the same ε̂ (the run equals a
            single-device run on the global batch). Defaults to `False`: each
            replica perturbs with its own gradient, as in the SAM paper.
        skip_nonfinite: when the step's gradient or loss is not finite, skip it
            entirely (weights, optimizer state, iteration count and BatchNorm
            statistics unchanged) and count it in the `skipped_steps` log.
            Defaults to `False`, which behaves as plain Keras.
        eps: added to the gradient norm. Defaults to `1e-12`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Reference:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021. Kwon et al., "ASAM: Adaptive
        Sharpness-Aware Minimization for Scale-Invariant Learning of Deep
        Neural Networks", ICML 2021.
    """

    def __init__(
        self,
        base_model: keras.Model,
        rho=0.05,
        *,
        p: float = 2,
        adaptive: bool = False,
        eta: float = 0.01,
        num_batch_splits: int = 1,
        sync_perturbation: bool = False,
        skip_nonfinite: bool = False,
        eps: float = 1e-12,
        **kwargs,
    ):
        check.check_base_model(base_model)
        rho = check.check_rho(rho)
        self._ascent_options = dict(
            p=validate_p(p),
            adaptive=check.check_bool("adaptive", adaptive),
            eta=check.check_real("eta", eta, minimum=0.0),
            eps=check.check_real("eps", eps, minimum=0.0, exclusive_minimum=True),
        )
        num_batch_splits = check.check_int(
            "num_batch_splits", num_batch_splits, minimum=1, maximum=MAX_BATCH_SPLITS
        )
        sync_perturbation = check.check_bool("sync_perturbation", sync_perturbation)
        skip_nonfinite = check.check_bool("skip_nonfinite", skip_nonfinite)
        # The wrapper takes the base's dtype policy, so that `compile` wraps the
        # optimizer in a LossScaleOptimizer exactly when the base is
        # mixed_float16.
        kwargs.setdefault("dtype", base_model.dtype_policy)
        super().__init__(**kwargs)
        self.base_model = base_model
        self.num_batch_splits = num_batch_splits
        self.sync_perturbation = sync_perturbation
        self.skip_nonfinite = skip_nonfinite
        self._rho_schedule = rho if not isinstance(rho, float) else None
        # The float as given, for `rho` and `get_config`; the variable holds
        # its float32 rounding, which is what the step reads.
        self._rho_float = None if self._rho_schedule is not None else rho
        self._rho_variable = keras.Variable(
            0.0 if self._rho_schedule else rho,
            trainable=False,
            dtype="float32",
            name="rho",
        )
        # Kept out of `self.metrics` (see the `metrics` property), so that
        # `evaluate` and validation logs never show a stale sharpness.
        self._sharpness_tracker = keras.metrics.Mean(name="sharpness")
        self._skipped_steps = keras.Variable(
            0, trainable=False, dtype="int64", name="skipped_steps"
        )
        if base_model.built:
            # Built like its base: `BackupAndRestore`, `save_weights` and
            # `load_weights` need a built model, and `fit` then calls the base
            # as plain Keras does, with plain Keras's errors for bad data.
            self.built = True

    # ------------------------------------------------------------------ api
    @property
    def rho(self):
        """ρ: a float, or the schedule given at construction."""
        if self._rho_schedule is not None:
            return self._rho_schedule
        value = float(self._rho_variable.numpy())
        # The float given, unless the variable changed since (e.g. restored
        # from a checkpoint): then the variable's value.
        if self._rho_float is not None and float(tf.cast(self._rho_float, tf.float32)) == value:
            return self._rho_float
        return value

    @rho.setter
    def rho(self, value):
        value = check.check_rho(value)
        if isinstance(value, float) and self._rho_schedule is None:
            self._rho_variable.assign(value)
            self._rho_float = value
            return
        raise check.InvalidArgumentError(
            "`rho` can only be changed between floats during training (the "
            "train function would have to be rebuilt for a schedule). "
            f"Received: rho={value!r}; current rho={self.rho!r}."
        )

    @property
    def p(self) -> float:
        return self._ascent_options["p"]

    @property
    def adaptive(self) -> bool:
        return self._ascent_options["adaptive"]

    @property
    def eta(self) -> float:
        return self._ascent_options["eta"]

    @property
    def eps(self) -> float:
        return self._ascent_options["eps"]

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def save(self, filepath, *args, **kwargs):
        """As Keras's; the legacy HDF5 format (`.h5`) is refused up front."""
        if str(filepath).endswith((".h5", ".hdf5")):
            raise self._legacy_hdf5_error(f"Received: filepath={str(filepath)!r}.")
        return super().save(filepath, *args, **kwargs)

    def _legacy_hdf5_error(self, received: str) -> ValueError:
        return ValueError(
            f"{type(self).__name__} cannot be saved in Keras's legacy HDF5 format: "
            "it leaves out the wrapper's state (the dropout seeds, LookSAM's stored "
            f"direction) and Keras cannot load such a file back. {received} Save a "
            "`.keras` file (`model.save('model.keras')`), or the weights alone with "
            "`model.save_weights('model.weights.h5')`."
        )

    def save_weights(self, filepath, *args, **kwargs):
        self._build_with_base()
        return super().save_weights(filepath, *args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """As Keras's; a compiled model also gets its optimizer's state back.

        Keras restores the optimizer from a weights file only once the
        optimizer is built (after a first step); a fresh compiled model would
        silently start with a new optimizer, so its optimizer is built first.
        """
        self._build_with_base()
        compiled = getattr(self, "optimizer", None) is not None
        if self.built and compiled and _holds_optimizer_state(filepath):
            self._build_optimizer()
        return super().load_weights(filepath, *args, **kwargs)

    def _build_optimizer(self):
        """Builds the optimizer now, eagerly and in the strategy's scope, if it
        is not built yet: an optimizer whose `build` assigns values
        (ScheduleFreeAdamW copies the weights) loses them when built inside a
        traced step."""
        if not self.optimizer.built and self.trainable_variables:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _build_with_base(self):
        """Once the base is built, builds the wrapper (subclasses may create
        their own state in `build`), so that weight files can be written and
        read before the first call, as with the base itself."""
        if self.built or not self.base_model.built:
            return
        try:  # functional and Sequential bases
            input_shape = tf.nest.map_structure(lambda t: tuple(t.shape), self.base_model.input)
        except (AttributeError, ValueError):  # a subclassed base, called before
            input_shape = (self.base_model.get_build_config() or {}).get("input_shape")
        if input_shape is not None:
            self.build(input_shape)

    def summary(self, *args, **kwargs):
        return self.base_model.summary(*args, **kwargs)

    def get_layer(self, name=None, index=None):
        """As Keras's; a name that is not the base's own is looked up in the
        base, so `model.get_layer("dense")` finds the base's layer."""
        if name is not None and index is None and name != self.base_model.name:
            return self.base_model.get_layer(name=name)
        return super().get_layer(name=name, index=index)

    def export(self, filepath, *args, **kwargs):
        """Exports the base model's inference (no SAM state) as a SavedModel."""
        return self.base_model.export(filepath, *args, **kwargs)

    @property
    def metrics(self):
        return [m for m in super().metrics if m is not self._sharpness_tracker]

    def reset_metrics(self):
        super().reset_metrics()
        self._sharpness_tracker.reset_state()

    # ------------------------------------------------------- training step
    def train_step(self, data):
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        if not all(layer.built for layer in self._flatten_layers()):
            # A subclassed base creates its weights in its first call. Keras's
            # own step reads them after the forward pass; SAM needs them first.
            # Built symbolically: the train graph gets no extra forward pass.
            # The backend's function, not `self.compute_output_spec`, so that
            # bad data raises the base's own error, as in plain Keras, without
            # a preface blaming the wrapper.
            keras_backend.compute_output_spec(
                self.call,
                tf.nest.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), x),
            )
        variables = self.trainable_variables
        if not variables:
            raise ValueError(
                "SAMModel has no trainable weights to train: the base model "
                f"{self.base_model.name!r} has none (is it frozen?)."
            )
        if not self.optimizer.built:
            # Built before the passes, not inside `apply`, so that `scale_loss`
            # reads the live loss scale rather than its initial constant.
            self.optimizer.build(variables)
        restorable = self._skippable_state() if self.skip_nonfinite else []
        saved = [tf.identity(v.value) for v in restorable]
        gradients, losses = self._step_gradients(x, y, sample_weight, variables)
        finite = self._apply(gradients, variables, losses)
        if self.skip_nonfinite:
            # Undo the clean pass's BatchNorm update of a skipped step.
            for variable, value in zip(restorable, saved):
                variable.assign(tf.where(finite, variable.value, value))
            self._skipped_steps.assign_add(tf.cast(tf.logical_not(finite), "int64"))
        logs = self.get_metrics_result()
        logs["sharpness"] = self._sharpness_tracker.result()
        if self.skip_nonfinite:
            logs["skipped_steps"] = self._skipped_steps.value
        return distribution.logs_for_reduction(logs, self.distribute_strategy)

    def test_step(self, data):
        logs = super().test_step(data)
        return distribution.logs_for_reduction(logs, self.distribute_strategy)

    def _step_gradients(self, x, y, sample_weight, variables):
        """The descent gradient of the whole batch and the pieces' clean losses."""
        with tf.name_scope(_PASS_SCOPE):
            return self._pieces_gradients(x, y, sample_weight, variables)

    def _pieces_gradients(self, x, y, sample_weight, variables):
        pieces = self._batch_pieces(x, y, sample_weight)
        # With several pieces, each clean pass hands back its update of the
        # model's state (BatchNorm statistics) instead of assigning it, into
        # this trace-time list; the step then assigns their size-weighted mean
        # once (see `_assign_mean_state`). Set past Keras's and TensorFlow's
        # attribute tracking, which would wrap the list and could save it.
        object.__setattr__(self, "_piece_state_updates", [])
        try:
            gradients, losses = None, []
            for piece, weight in pieces:
                # One piece after the other: run side by side, the pieces'
                # passes would hold all their activations at once.
                after = [] if gradients is None else [g for g in gradients if g is not None]
                with tf.control_dependencies(after):
                    piece_gradients, loss = self._sam_gradients(*piece, variables)
                losses.append(loss)
                if weight is not None:
                    piece_gradients = [
                        None if g is None else g * tf.cast(weight, g.dtype)
                        for g in piece_gradients
                    ]
                gradients = piece_gradients if gradients is None else [
                    a if b is None else (b if a is None else a + b)
                    for a, b in zip(gradients, piece_gradients)
                ]
            if self._collects_piece_state:
                self._assign_mean_state(
                    [weight for _, weight in pieces], self._piece_state_updates
                )
            return gradients, losses
        finally:
            object.__setattr__(self, "_piece_state_updates", None)

    @property
    def _collects_piece_state(self) -> bool:
        return self.num_batch_splits > 1

    def _assign_mean_state(self, weights, updates):
        """One update of the model's state from the pieces' updates.

        Each piece's clean pass started from the same state, so for the
        momentum update of BatchNorm the size-weighted mean of the pieces'
        new values is one momentum step towards the pieces' mean statistics,
        as the m-sharpness of the SAM paper averages the state of its
        devices. Non-float state takes the first piece's value.
        """
        for i, variable in enumerate(self._model_state()):
            values = [(w, u[i]) for w, u in zip(weights, updates) if u[i] is not None]
            if not values:
                continue
            if not variable.dtype.startswith("float"):
                variable.assign(values[0][1])
                continue
            total = tf.add_n([tf.cast(w, variable.dtype) for w, _ in values])
            mean = tf.add_n([tf.cast(w, variable.dtype) * u for w, u in values]) / total
            variable.assign(mean)

    def _batch_pieces(self, x, y, sample_weight):
        """[((x, y, sample_weight), weight)] for each m-sharpness piece (weight None for one)."""
        k = self.num_batch_splits
        if k == 1:
            return [((x, y, sample_weight), None)]
        rows = _first_tensor(x).shape[0]
        if rows is not None and rows < k:
            raise ValueError(
                f"`num_batch_splits={k}` needs at least {k} samples per replica "
                f"batch; got a batch of {rows}."
            )
        if rows is None:
            rows = tf.shape(_first_tensor(x))[0]
        # Contiguous pieces whose sizes differ by at most one.
        smaller, larger_count = rows // k, rows % k
        pieces, start = [], 0
        with tf.control_dependencies(self._same_rows_checks(x, y, sample_weight)):
            for i in range(k):
                size = smaller + tf.cast(i < larger_count, smaller.dtype) if tf.is_tensor(
                    smaller
                ) else smaller + (1 if i < larger_count else 0)
                stop = start + size
                piece = tuple(_slice_rows(t, start, stop) for t in (x, y, sample_weight))
                pieces.append((piece, tf.cast(size, tf.float32) / tf.cast(rows, tf.float32)))
                start = stop
        return pieces

    def _same_rows_checks(self, x, y, sample_weight):
        """Checks that x, y and sample_weight have as many rows each.

        Cut apart row by row, pieces of different lengths would broadcast
        against each other and train on mismatched rows without an error
        (uncut, plain Keras's loss fails on the shapes). Raises at trace
        time when the shapes are known; otherwise returns assertion ops.
        """
        tensors = [
            (name, t)
            for name, structure in (("x", x), ("y", y), ("sample_weight", sample_weight))
            for t in tf.nest.flatten(structure)
            if t is not None and t.shape.rank
        ]
        reference_name, reference = tensors[0]
        message = (
            f"`num_batch_splits={self.num_batch_splits}` cuts each batch row by row, "
            "so x, y and sample_weight must have the same number of rows (the "
            "first dimension)"
        )
        checks = []
        for name, t in tensors[1:]:
            if reference.shape[0] is not None and t.shape[0] is not None:
                if reference.shape[0] != t.shape[0]:
                    raise ValueError(
                        f"{message}; got {reference.shape[0]} rows in {reference_name} "
                        f"and {t.shape[0]} in {name}."
                    )
                continue
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(reference)[0],
                    tf.shape(t)[0],
                    message=f"{message}; {reference_name} and {name} differ:",
                )
            )
        return checks

    def _sam_gradients(self, x, y, sample_weight, variables):
        """(descent gradient, clean loss) of one piece (scaled as for `apply`)."""

        def perturbed_pass(loss, ascent_gradients):
            return self._perturbed_gradients(
                x, y, sample_weight, variables, loss, ascent_gradients
            )

        # Under `jit_compile=True` each pass is its own XLA program (see
        # `make_train_function`). The perturbed pass is not handed the clean
        # gradient: as an input it would stay allocated through that program.
        loss, gradients, ascent_gradients = self._compiled_clean_pass(
            x, y, sample_weight, variables
        )
        sam_gradients = self._xla(perturbed_pass)(loss, ascent_gradients)
        return self._descent_direction(gradients, sam_gradients, ascent_gradients), loss

    def _compiled_clean_pass(self, x, y, sample_weight, variables):
        """(loss, gradients, ascent gradients): the clean pass as one XLA program.

        The ascent gradient is taken after the program: without a loss scale
        or a synced ε̂ it is then the clean gradient itself, one tensor (two
        outputs of a compiled function would be two, and a later program
        taking both would hold two copies); and a synced ε̂'s all-reduce stays
        out of `LookSAMModel`'s `tf.cond`, where MirroredStrategy cannot run it.
        """

        collect_state = self._collects_piece_state

        def clean_pass():
            return self._clean_pass(x, y, sample_weight, variables, collect_state)

        loss, gradients, state_update = self._xla(clean_pass)()
        if collect_state:
            self._piece_state_updates.append(state_update)
        return loss, gradients, self._ascent_gradients(gradients)

    def _perturbed_gradients(self, x, y, sample_weight, variables, loss, ascent_gradients):
        """ε̂ from `_ascent_gradients(clean gradient)`, then the gradient at w + ε̂."""
        e_hat = self._ascent(ascent_gradients, variables)
        perturbed_loss, sam_gradients = self._perturbed_pass(
            x, y, sample_weight, variables, e_hat
        )
        self._track_sharpness(perturbed_loss - loss, x)
        if self.skip_nonfinite or self._loss_scaled:
            # A non-finite first gradient gives ε̂ = 0, and the second pass
            # (another dropout mask) may then be finite: the step must still
            # be skipped (and the loss scale lowered), as plain Keras skips a
            # step whose gradient overflowed.
            finite = all_finite(ascent_gradients)
            if self.skip_nonfinite:
                # The loss at w + ε̂ may overflow while its gradient does not.
                finite = tf.logical_and(finite, tf.math.is_finite(perturbed_loss))
            sam_gradients = distribution.poison_unless(finite, sam_gradients)
        return sam_gradients

    def _clean_pass(self, x, y, sample_weight, variables, collect_state=False):
        """Keras's own forward/backward at w.

        Returns (loss, scaled gradients, state update). With `collect_state`
        the forward pass runs in a `keras.StatelessScope` reading w as is:
        the new values of `_model_state()` are returned, not assigned (the
        dropout seeds and metrics are). Otherwise they are assigned and the
        state update is `[]`.
        """
        state_update = []
        with tf.GradientTape() as tape:
            # Created inside the tape: the reads of w it maps to are recorded.
            scope = (
                keras.StatelessScope(
                    state_mapping=[(v, v.value) for v in variables], collect_losses=True
                )
                if collect_state
                else contextlib.nullcontext()
            )
            with scope:
                y_pred = self(x, training=True)
                loss = self._compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
            if collect_state:
                # The dropout seeds and the per-output loss trackers of
                # `compute_loss` move as usual; the model's state is returned.
                self._assign_captured(scope, self._seed_states())
                self._assign_captured(scope, self._training_metric_variables())
                state_update = [scope.get_current_value(v) for v in self._model_state()]
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(_first_tensor(x))[0],
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return loss, gradients, state_update

    def _perturbed_pass(self, x, y, sample_weight, variables, e_hat):
        """Loss and scaled gradient at w + ε̂, without assigning any variable."""
        moved = [i for i, e in enumerate(e_hat) if e is not None]
        perturbed = [variables[i].value + e_hat[i] for i in moved]
        mapping = [(variables[i], value) for i, value in zip(moved, perturbed)]
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                y_pred = self(x, training=True)
                loss = self._compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
            scaled_loss = self.optimizer.scale_loss(loss)
        moved_gradients = tape.gradient(scaled_loss, perturbed)
        # Keep the random masks advancing; drop every other captured update.
        self._assign_captured(scope, self._seed_states())
        gradients = [None] * len(variables)
        for i, g in zip(moved, moved_gradients):
            gradients[i] = g
        return loss, gradients

    @staticmethod
    def _assign_captured(scope, variables):
        """Assigns the new values `scope` captured for `variables`, if any."""
        for variable in variables:
            new_value = scope.get_current_value(variable)
            if new_value is not None:
                variable.assign(new_value)

    def _seed_states(self):
        return [
            generator.state
            for layer in self._flatten_layers()
            for generator in getattr(layer, "_seed_generators", [])
        ]

    # -------------------------------------------------------------- hooks
    def _current_rho(self):
        if self._rho_schedule is not None:
            return tf.cast(self._rho_schedule(self.optimizer.iterations), tf.float32)
        return self._rho_variable.value

    def _ascent_gradients(self, gradients):
        """The gradient ε̂ is taken from: unscaled, and all-reduced if synced."""
        gradients = self._unscaled(gradients)
        if self.sync_perturbation:
            gradients = distribution.all_reduce_sum(gradients)
        return gradients

    def _ascent(self, gradients, variables):
        """ε̂ from the gradient of `_ascent_gradients`."""
        values = [v.value for v in variables] if self.adaptive else variables
        return perturbation(gradients, values, self._current_rho(), **self._ascent_options)

    def _descent_direction(self, clean_gradients, sam_gradients, ascent_gradients):
        """The gradient handed to the optimizer; SAM uses the perturbed one.

        `ascent_gradients` is what ε̂ was taken from (`_ascent_gradients`).
        """
        return sam_gradients

    # ------------------------------------------------------------ helpers
    def _loss_scale(self):
        """The factor `scale_loss` multiplies the loss by, or None."""
        if self._loss_scaled:
            return self.optimizer.dynamic_scale
        return self.optimizer.loss_scale_factor

    def _times_loss_scale(self, value):
        """`value` times the loss scale, if any (what `_unscaled` divides out)."""
        scale = self._loss_scale()
        return value if scale is None else value * tf.cast(scale, tf.float32)

    def _unscaled(self, gradients):
        """Gradients of the unscaled loss (`scale_loss` multiplied it)."""
        scale = self._loss_scale()
        if scale is None:
            return gradients
        inverse = 1.0 / scale
        return [None if g is None else g * tf.cast(inverse, g.dtype) for g in gradients]

    def _track_sharpness(self, difference, x):
        self._sharpness_tracker.update_state(
            unscale_loss_for_distribution(difference),
            sample_weight=tf.shape(_first_tensor(x))[0],
        )

    @property
    def _loss_scaled(self) -> bool:
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def _apply(self, gradients, variables, losses):
        """Applies the step; returns whether the optimizer took it (a bool).

        It did unless the step was skipped: by `skip_nonfinite`, or by a
        `LossScaleOptimizer` (non-finite gradients). Unused, the check is
        pruned from the step's graph.
        """
        loss_scaled = self._loss_scaled
        distributed = distribution.num_replicas() > 1
        if not (self.skip_nonfinite or (loss_scaled and distributed)):
            self.optimizer.apply(gradients, variables)
            # What a LossScaleOptimizer checks before it applies a step.
            return all_finite(gradients) if loss_scaled else tf.constant(True)
        finite = distribution.all_replicas_finite(gradients + losses)
        if loss_scaled:
            # The LossScaleOptimizer skips and lowers its scale by itself, but
            # under a strategy it only looks at replica 0's gradient: make
            # every replica's gradient non-finite when any replica's is.
            if distributed:
                gradients = distribution.poison_unless(finite, gradients)
            self.optimizer.apply(gradients, variables)
        else:
            distribution.apply_if(finite, self.optimizer, gradients, variables)
        return finite

    def _model_state(self):
        """Non-trainable weights a step updates: BatchNorm statistics, LookSAM's state."""
        excluded = {id(s) for s in self._seed_states()}
        excluded.update(id(v) for v in (self._rho_variable, self._skipped_steps))
        return [v for v in self.non_trainable_variables if id(v) not in excluded]

    def _training_metric_variables(self):
        """The loss tracker's and compiled metrics' variables."""
        return [v for metric in super().metrics for v in metric.variables]

    def _skippable_state(self):
        """Variables besides the optimizer's that a skipped step leaves as they were.

        The model's state and the training metrics: a skipped batch counts in
        neither `loss` nor any metric nor `sharpness`, so no NaN reaches the
        logs (nor stops a run through `TerminateOnNaN`). The dropout seeds
        still advance.
        """
        state = self._model_state() + self._training_metric_variables()
        return state + list(self._sharpness_tracker.variables)

    @property
    def _jit_per_replica(self) -> bool:
        """Whether XLA compiles each pass on its own inside a plain outer step."""
        return bool(getattr(self, "_xla_inside_replicas", False))

    def _xla(self, function):
        """`function` compiled with XLA when the passes are compiled apart."""
        if self._jit_per_replica:
            return tf.function(function, jit_compile=True, autograph=False)
        return function

    def make_train_function(self, force=False):
        """With `jit_compile=True`, XLA compiles each pass on its own.

        The outer step runs as a plain `tf.function`; the clean pass (with the
        ascent's gradient) and the perturbed pass (ε̂, w + ε̂ and its gradient)
        are two XLA programs, and the optimizer's update runs between steps
        as TensorFlow ops. Two reasons:

        - memory: compiled as one program, XLA:CPU creates the index buffers
          of both passes' MaxPool gradients at its start and keeps the second
          pass's alive through the first (measured on the benchmark's small
          CNN, batch 128: a peak of 188 MB against plain Keras's 83 MB, the
          same for the Keras 2 SAM). Pass by pass each program peaks like a
          plain step plus the ascent gradient and w + ε̂ (measured: less than
          one copy of the weights, `python benchmarks/xla_memory.py`).
        - strategies: Keras 3 cannot run a `jit_compile=True` step under
          `MirroredStrategy` ("Trying to access resource ... replica_1"); per
          replica, the passes (everything but the optimizer's cross-replica
          update) compile fine.
        """
        if self.train_function is not None and not force:
            return self.train_function
        self._check_strategy_support()
        self._warn_if_pieces_misweighted()
        self._build_optimizer()
        jit = bool(self.jit_compile)
        self._xla_inside_replicas = jit and not (
            self._multi_replica_jit() and self._all_reduces_inside_passes()
        )
        if jit and not self._xla_inside_replicas:
            warnings.warn(
                "SAMModel: `jit_compile=True` is ignored under "
                f"{type(self.distribute_strategy).__name__}: a replica's passes "
                "all-reduce (`sync_perturbation=True` or a synchronized "
                "BatchNormalization), which TensorFlow cannot run inside a "
                "per-replica XLA function. Training runs without XLA.",
                stacklevel=2,
            )
        with self._outer_jit_off(jit):
            return super().make_train_function(force)

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        with self._outer_jit_off(self._multi_replica_jit()):
            return super().make_test_function(force)

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        with self._outer_jit_off(self._multi_replica_jit()):
            return super().make_predict_function(force)

    def _check_strategy_support(self):
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        steps = getattr(optimizer, "gradient_accumulation_steps", None)
        strategy = self.distribute_strategy
        mirrored = isinstance(strategy, tf.distribute.MirroredStrategy) and (
            strategy.num_replicas_in_sync > 1
        )
        if mirrored and self.steps_per_execution > 1:
            raise ValueError(
                f"`steps_per_execution={self.steps_per_execution}` (a `compile` argument) "
                f"is not supported under MirroredStrategy with {strategy.num_replicas_in_sync} "
                f"replicas: Keras {keras.__version__}'s multi-step loop fails there for every "
                "model (\"You must feed a value for placeholder tensor\"). Use "
                "`steps_per_execution=1` under MirroredStrategy."
            )
        if steps and mirrored:
            raise ValueError(
                f"`gradient_accumulation_steps={steps}` (an optimizer argument) is not "
                f"supported under MirroredStrategy with {strategy.num_replicas_in_sync} "
                f"replicas: Keras {keras.__version__} updates the weights inside a "
                "`tf.cond` there, which TensorFlow rejects for every model. Use a "
                f"global batch {steps}x larger instead, or train on one device."
            )

    def _warn_if_pieces_misweighted(self):
        """m-sharpness weights each piece's gradient by its share of the rows,
        which adds up to the batch's gradient only for losses averaged over the
        rows (Keras's default reduction)."""
        if self.num_batch_splits == 1:
            return
        reductions = sorted(
            {
                reduction
                for loss in tf.nest.flatten(getattr(self, "loss", None))
                if (reduction := getattr(loss, "reduction", None))
                in ("sum", "mean_with_sample_weight")
            }
        )
        if reductions:
            warnings.warn(
                f"SAMModel: `num_batch_splits={self.num_batch_splits}` weights each "
                "piece's gradient by its share of the batch's rows, which is exact for "
                "losses averaged over the rows (`reduction=\"sum_over_batch_size\"`, "
                f"Keras's default). With `reduction={reductions[0]!r}` the step is not "
                "the batch's: a summed loss's step comes out about num_batch_splits "
                "times smaller, and a loss averaged over sample weights weighs the "
                "pieces by rows, not by their share of the weights. Use the default "
                "reduction (and scale the learning rate) for m-sharpness.",
                stacklevel=3,
            )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 reduces the first distributed batch across replicas with
        # `strategy.reduce("MEAN")`, which fails across workers; only its
        # shapes and dtypes are needed, so build from one replica's batch.
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = distribution.first_local_value(
                    self.distribute_strategy, next(batches)
                )
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _all_reduces_inside_passes(self) -> bool:
        # A synced ε̂ or synchronized BatchNorm all-reduce inside a replica's
        # passes: a merge_call that fails inside a nested XLA tf.function.
        return self.sync_perturbation or any(
            getattr(layer, "synchronized", False) for layer in self._flatten_layers()
        )

    def _multi_replica_jit(self) -> bool:
        replicas = distribution.num_replicas(self.distribute_strategy)
        return bool(self.jit_compile) and replicas > 1

    @contextlib.contextmanager
    def _outer_jit_off(self, off: bool):
        jit_compile = self.jit_compile
        if off:
            self.jit_compile = False
        try:
            yield
        finally:
            self.jit_compile = jit_compile

    # ------------------------------------------------------- saved state
    # Keras saves no `SeedGenerator` state (keras-team/keras#19796): restored
    # from `save`, `save_weights`, `BackupAndRestore` or a `tf.train.Checkpoint`,
    # a model would draw the dropout masks of its first steps again. The
    # wrapper saves its base's seed states with its own variables.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, state in enumerate(self._seed_states()):
            store[f"seed_state_{i}"] = state

    def load_own_variables(self, store):
        seeds = {key: store[key] for key in store.keys() if key.startswith("seed_state_")}
        super().load_own_variables({key: store[key] for key in store.keys() if key not in seeds})
        for i, state in enumerate(self._seed_states()):
            if f"seed_state_{i}" in seeds:  # absent from files of keras-sam 0.1.0
                state.assign(seeds[f"seed_state_{i}"])

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":  # `tf.train.Checkpoint`, not SavedModel
            for i, state in enumerate(self._seed_states()):
                children[f"seed_state_{i}"] = state
        return children

    # ------------------------------------------------------------- config
    def get_config(self):
        if keras_global_state.get_global_attribute("use_legacy_config", False):
            # Keras's legacy HDF5 writer, reached without `save`
            # (`keras.saving.save_model(model, "model.h5")`), asks for the
            # config before it writes any weights.
            raise self._legacy_hdf5_error("(Keras's legacy HDF5 writer asked for the config.)")
        rho = self._rho_schedule if self._rho_schedule is not None else self.rho
        return {
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "rho": keras.saving.serialize_keras_object(rho)
            if self._rho_schedule is not None
            else rho,
            "p": self.p,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "num_batch_splits": self.num_batch_splits,
            "sync_perturbation": self.sync_perturbation,
            "skip_nonfinite": self.skip_nonfinite,
            "eps": self.eps,
            # The wrapper's policy: it decides whether `compile` wraps the
            # optimizer in a LossScaleOptimizer, also after `load_model`.
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["base_model"] = keras.saving.deserialize_keras_object(
            config["base_model"], custom_objects=custom_objects
        )
        if isinstance(config.get("rho"), dict):
            config["rho"] = keras.saving.deserialize_keras_object(
                config["rho"], custom_objects=custom_objects
            )
        return cls(**config)
