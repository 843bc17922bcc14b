"""`SAMModel`: a `keras.Model` whose `fit` runs Sharpness-Aware Minimization.

The step (`_sam_train_step`, on every backend) reads like the algorithm:
the clean pass at w, the ascent ε̂, the perturbed pass at w + ε̂, the descent
direction, and the optimizer's update from w. Each concern around it has its
own module: m-sharpness (`batch_splits`), the non-finite and loss-scale guard
(`guard`), the gradients' frame under replicas and loss scaling
(`gradient_frame`), saving (`saving`), and the backend's mechanics (taking
gradients, compiling, replicas: `backend`). The ascent rules are pure
functions (`perturbation`).
"""

from __future__ import annotations

import keras

from keras_sam import _validation as check
from keras_sam import backend, batch_splits, selection
from keras_sam.gradient_frame import GradientFrame
from keras_sam.gradient_math import as_dense
from keras_sam.guard import StepGuard
from keras_sam.kerashub import TaskSupportMixin
from keras_sam.perturbation import perturbation, validate_p
from keras_sam.saving import SavedStateMixin
from keras_sam.step_bookkeeping import StepBookkeepingMixin

__all__ = ["SAMModel"]

MAX_BATCH_SPLITS = batch_splits.MAX_BATCH_SPLITS


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(
    backend.Trainer, SavedStateMixin, StepBookkeepingMixin, TaskSupportMixin, keras.Model
):
    """Wraps a Keras model so that `fit` trains it with SAM.

    `predict`, `evaluate`, `__call__`, `summary` and `export` are the base
    model's; only `fit` changes. Works with any Keras optimizer, loss, metric,
    callback, `jit_compile`, and the `tf.distribute` strategies listed in the
    docs.

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
        perturb: which weights ε̂ moves (SAM-ON): `None` for all,
            `"normalization"` for the trainable weights of the normalization
            layers, or a callable taking a `keras.Variable` and returning a
            bool (not savable in a `.keras` file). The norm is taken over the
            chosen weights; every weight descends along the second gradient.
            Defaults to `None`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    The logs carry `sharpness`, the epoch mean of L(w + ε̂) − L(w) over the
    steps that climbed, and, where some steps are SAM steps and others not (a
    variant's policy or a ρ schedule), `sam_steps`: their share of the epoch's
    steps (a plain step costs one forward/backward pass, a SAM step two).

    Hooks for variants: a variant (`GSAMModel`, `LookSAMModel`, ...) overrides
    only these methods, and never the step, the replicas or the loss scaling.
    Every hook works on lists of tensors aligned with the trainable
    variables (`None` where a variable has no gradient), in the frame of
    `gradient_frame`: unscaled, and summed over replicas when
    `sync_perturbation=True`. Hooks are traced into the step; they return
    new values and assign nothing.

    - `ascent(gradients, variables)`: ε̂ from the clean gradient (SAM's
      `perturbation`; `None` leaves a variable unperturbed).
    - `descent_direction(clean_gradients, perturbed_gradients)`: the
      direction of a step that took the perturbed pass. Default: the
      perturbed gradient.
    - `takes_second_pass(gradients)`: whether this step climbs and takes the
      perturbed pass (a bool or a scalar bool tensor; replicas agree: a
      step is two-pass if any replica's is). Default: `rho > 0`. A step that
      does not costs one forward/backward pass.
    - `one_pass_direction(gradients)`: the direction of a step without the
      perturbed pass. Default: the clean gradient (the plain step).
    - `first_pass_offset(variables)`: where the first pass is taken, as an
      offset from w (`None`: at w). For look-ahead variants such as MSAM.
    - `updated_state(clean_gradients, perturbed_gradients, second_pass)`:
      `(variable, new value)` pairs of the state a variant keeps (e.g. a
      `variant_state.PerWeightState`); assigned only when the optimizer
      takes the step. `perturbed_gradients` equals the clean ones on a
      one-pass step. Default: none.
    - `supports_batch_splits`: a class attribute; `False` for a variant
      whose state moves once per step (it then needs `num_batch_splits=1`).

    Reference:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021. Kwon et al., "ASAM: Adaptive
        Sharpness-Aware Minimization for Scale-Invariant Learning of Deep
        Neural Networks", ICML 2021.
    """

    supports_batch_splits = True

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
        perturb=None,
        **kwargs,
    ):
        check.check_base_model(base_model)
        self.perturb = selection.check_perturb(perturb)
        rho = check.check_rho(rho)
        self._ascent_options = dict(
            p=validate_p(p),
            adaptive=check.check_bool("adaptive", adaptive),
            eta=check.check_real("eta", eta, minimum=0.0),
            eps=check.check_real("eps", eps, minimum=0.0, exclusive_minimum=True),
        )
        self.num_batch_splits = check.check_int(
            "num_batch_splits", num_batch_splits, minimum=1, maximum=MAX_BATCH_SPLITS
        )
        if self.num_batch_splits != 1 and not self.supports_batch_splits:
            raise check.InvalidArgumentError(
                f"{type(self).__name__} keeps state that moves once per step and does "
                "not support m-sharpness: `num_batch_splits` must be 1. Received: "
                f"num_batch_splits={num_batch_splits!r}."
            )
        self.sync_perturbation = check.check_bool("sync_perturbation", sync_perturbation)
        self.skip_nonfinite = check.check_bool("skip_nonfinite", skip_nonfinite)
        # The wrapper takes the base's dtype policy, so that `compile` wraps the
        # optimizer in a LossScaleOptimizer exactly when the base is mixed_float16.
        kwargs.setdefault("dtype", base_model.dtype_policy)
        super().__init__(**kwargs)
        self.base_model = base_model
        self._rho_schedule = rho if not isinstance(rho, float) else None
        # The float as given, for `rho` and `get_config`; the variable holds its
        # float32 rounding, which is what the step reads.
        self._rho_float = None if self._rho_schedule is not None else rho
        self._rho_variable = keras.Variable(
            0.0 if self._rho_schedule else rho, trainable=False, dtype="float32", name="rho"
        )
        # Kept out of `self.metrics`, so that `evaluate` never shows a stale sharpness.
        self._sharpness_tracker = keras.metrics.Mean(name="sharpness")
        self._sam_steps_tracker = keras.metrics.Mean(name="sam_steps")
        self._skipped_steps = keras.Variable(
            0, trainable=False, dtype=backend.counter_dtype(), name="skipped_steps"
        )
        if base_model.built:
            # Built like its base: `BackupAndRestore` and weight files need a
            # built model, and `fit` then calls the base as plain Keras does.
            self.built = True

    # ------------------------------------------------------------------ api
    @property
    def rho(self):
        """ρ: a float, or the schedule given at construction."""
        if self._rho_schedule is not None:
            return self._rho_schedule
        self._read_state()
        value = float(keras.ops.convert_to_numpy(self._rho_variable.value))
        # The float given, unless the variable changed since (e.g. restored).
        if self._rho_float is not None and check.as_float32(self._rho_float) == value:
            return self._rho_float
        return value

    @rho.setter
    def rho(self, value):
        value = check.check_rho(value)
        if isinstance(value, float) and self._rho_schedule is None:
            self._read_state()  # the next step reads the variables again
            self._rho_variable.assign(value)
            self._rho_float = value
            return
        raise check.InvalidArgumentError(
            "`rho` can only be changed between floats during training (the "
            "train function would have to be rebuilt for a schedule). "
            f"Received: rho={value!r}; current rho={self.rho!r}."
        )

    p = property(lambda self: self._ascent_options["p"])
    adaptive = property(lambda self: self._ascent_options["adaptive"])
    eta = property(lambda self: self._ascent_options["eta"])
    eps = property(lambda self: self._ascent_options["eps"])

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.base_model.built:
            for state in self._per_weight_states():
                state.build()

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

    # ------------------------------------------------------------ the step
    def _sam_train_step(self, data):
        """Keras's `train_step` with SAM's passes, for the whole batch."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self._variables_to_train(x)
        guard = StepGuard(
            self.optimizer, skip_nonfinite=self.skip_nonfinite, skipped_steps=self._skipped_steps
        )
        with guard.transaction(self._skippable_state()) as transaction:
            step = batch_splits.run_pieces(
                self._sam_piece, (x, y, sample_weight), self.num_batch_splits,
                self._model_state(), after=self._after, rows_of=self._batch_rows,
                same_rows_checks=self._same_rows_checks,
            )  # fmt: skip
            applied = transaction.apply(
                step.direction, variables,
                checked_gradients=step.checked_gradients, checked_losses=step.losses,
            )  # fmt: skip
        for variable, value in step.variant_state:
            variable.assign(keras.ops.where(applied, value, variable.value))
        logs = self.get_metrics_result()
        if step.second_pass is not False:  # (one-pass variants have no sharpness)
            logs["sharpness"] = self._sharpness_tracker.result()
        if self._logs_sam_steps() and step.second_pass is not False:
            self._sam_steps_tracker.update_state(keras.ops.cast(step.second_pass, "float32"))
            logs["sam_steps"] = self._sam_steps_tracker.result()
        if self.skip_nonfinite:
            logs["skipped_steps"] = self._skipped_steps.value
        return logs

    def _sam_piece(self, x, y, sample_weight, collect_state=False):
        """SAM on one piece of the batch (the whole batch unless m-sharpness)."""
        variables = self.trainable_variables
        frame = GradientFrame(self._loss_scale(), synced=self.sync_perturbation)

        # 1. The clean pass at w: Keras's forward/backward, with its metrics,
        #    loss tracker and BatchNorm updates.
        clean = self._first_pass(
            x, y, sample_weight, variables,
            offset=self.first_pass_offset(variables), collect_state=collect_state,
        )  # fmt: skip
        gradients = frame.to_hooks(clean.gradients)
        second_pass = selection.any_chosen(self.perturb, self.base_model, variables)
        if second_pass:  # (perturbing nothing is the plain step)
            second_pass = backend.replicas().any_replica(self.takes_second_pass(gradients))

        # 2. The ascent to w + ε̂, and 3. the perturbed pass there, reading the
        #    variables as w + ε̂ without assigning them (a one-pass step skips both).
        def climb():
            e_hat = self.ascent(gradients, variables)
            return self._perturbed_pass(x, y, sample_weight, variables, e_hat)

        perturbed = self._branch(second_pass, climb, lambda: clean._replace(state_update=[]))
        self._track_sharpness(perturbed.loss - clean.loss, second_pass, x)

        # 4. The descent direction, which the guard hands to the optimizer (5.).
        direction, state = self._descent(frame, second_pass, clean, perturbed, gradients)
        return batch_splits.PieceStep(
            direction=direction,
            checked_gradients=gradients,
            losses=[clean.loss, perturbed.loss],
            state_update=clean.state_update,
            variant_state=state,
            second_pass=second_pass,
        )

    def _descent(self, frame, second_pass, clean, perturbed, gradients):
        """(direction in the optimizer's frame, variant state) of one piece."""
        combines = self._overrides("descent_direction") or self._overrides("one_pass_direction")
        if not combines and not self._overrides("updated_state"):
            return perturbed.gradients, []  # SAM: the branch chose the gradient
        perturbed_gradients = frame.to_hooks(perturbed.gradients)
        state = self.updated_state(gradients, perturbed_gradients, second_pass)
        if not combines:
            return perturbed.gradients, state
        if isinstance(second_pass, bool):
            chosen = (
                self.descent_direction(gradients, perturbed_gradients)
                if second_pass
                else self.one_pass_direction(gradients)
            )
        else:
            chosen = [
                None if a is None else keras.ops.where(second_pass, as_dense(a), as_dense(b))
                for a, b in zip(
                    self.descent_direction(gradients, perturbed_gradients),
                    self.one_pass_direction(gradients),
                )
            ]
        return frame.from_hooks(chosen), state

    # ---------------------------------------------------------------- hooks
    def ascent(self, gradients, variables):
        """ε̂ from the clean gradient: SAM's, ASAM's or the p-norm ascent, over
        the weights `perturb` chooses."""
        chosen = selection.chosen_weights(self.perturb, self.base_model, variables)
        gradients = [g if keep else None for g, keep in zip(gradients, chosen)]
        values = [v.value for v in variables] if self.adaptive else variables
        return perturbation(gradients, values, self.current_rho(), **self._ascent_options)

    def descent_direction(self, clean_gradients, perturbed_gradients):
        """The direction of a two-pass step; SAM's is the perturbed gradient."""
        return perturbed_gradients

    def takes_second_pass(self, gradients):
        """Whether this step climbs to w + ε̂; SAM's takes it when rho > 0."""
        return self.current_rho() > 0.0

    def one_pass_direction(self, gradients):
        """The direction of a one-pass step: the clean gradient."""
        return gradients

    def first_pass_offset(self, variables):
        """Where the first pass reads the weights, as an offset from w (None: w)."""
        return None

    def updated_state(self, clean_gradients, perturbed_gradients, second_pass):
        """`(variable, new value)` pairs of a variant's own state."""
        return []

    def current_rho(self):
        """ρ for this step, a float32 scalar tensor."""
        if self._rho_schedule is not None:
            return keras.ops.cast(self._rho_schedule(self.optimizer.iterations), "float32")
        return self._rho_variable.value

    # -------------------------------------------------------------- helpers
    def _overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(SAMModel, hook)

    def _loss_scale(self):
        """The factor `scale_loss` multiplies the loss by, or None."""
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return self.optimizer.dynamic_scale
        return self.optimizer.loss_scale_factor

    # --------------------------------------------------------------- config
    def get_config(self):
        self._check_not_legacy_hdf5()
        if callable(self.perturb):
            raise ValueError(
                f"{type(self).__name__} with a callable `perturb` cannot be saved with its "
                f"config: a function is not serializable. Received: perturb={self.perturb!r}. "
                "Save the weights (`save_weights`), or use `perturb=\"normalization\"`."
            )
        schedule = self._rho_schedule
        return self._task_free_config({
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "rho": self.rho if schedule is None else keras.saving.serialize_keras_object(schedule),
            "p": self.p,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "num_batch_splits": self.num_batch_splits,
            "sync_perturbation": self.sync_perturbation,
            "skip_nonfinite": self.skip_nonfinite,
            "eps": self.eps,
            "perturb": self.perturb,
            # It decides whether `compile` wraps the optimizer in a
            # LossScaleOptimizer, also after `load_model`.
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        })

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
