"""How a SAM step runs on JAX: Keras's stateless step, jit and `keras.distribution`.

`Trainer` is mixed into `SAMModel` before `keras.Model`. Keras's JAX trainer
calls `train_step(state, data)` with the values of every variable and takes
their new values back; the mix-in runs `SAMModel`'s backend-neutral step in a
`keras.StatelessScope` over that state (`scopes.py`) and gives it its
mechanics: passes taken with `jax.value_and_grad` (`passes.py`), `branch`
as `jax.lax.cond` (one pass or two, chosen inside the compiled step), and
the replica operations (`replicas.py`). `jit_compile=True` (JAX's default)
compiles the whole step, as Keras does.
"""

from __future__ import annotations

import jax
import keras

from keras_sam import batch_splits
from keras_sam.backend.jax import passes, scopes

__all__ = ["Trainer"]


class Trainer:
    """The JAX half of `SAMModel` (see the module docstring)."""

    # ----------------------------------------------------- Keras's entry points
    def train_step(self, state, data):
        groups = self._state_groups()
        mapping = [
            (v, value) for group, values in zip(groups, state) for v, value in zip(group, values)
        ]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._sam_train_step(data)
        new_state = tuple(
            [_value_in(scope, v, old) for v, old in zip(group, values)]
            for group, values in zip(groups, state)
        )
        return logs, new_state

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._check_distribution_support()
        batch_splits.warn_if_misweighted(self.num_batch_splits, getattr(self, "loss", None))
        self._build_variant_state()
        return super().make_train_function(force)

    @property
    def metrics_variables(self):
        # The sharpness tracker is kept out of `metrics` (so that `evaluate`
        # shows no stale sharpness) but is state the step updates.
        return super().metrics_variables + [v for t in self._step_trackers() for v in t.variables]

    def _state_groups(self):
        """The variables of Keras's JAX state, in its order."""
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )

    def _read_state(self):
        """Writes the running step's state into the variables (during `fit`,
        Keras holds it apart from them), so that Python reads and sets them."""
        self.jax_state_sync()

    # ------------------------------------------------- the step's mechanics
    def _first_pass(self, x, y, sample_weight, variables, *, offset, collect_state):
        return passes.first_pass(
            self, x, y, sample_weight, variables,
            model_state=self._model_state(), offset=offset, collect_state=collect_state,
        )  # fmt: skip

    def _perturbed_pass(self, x, y, sample_weight, variables, e_hat):
        return passes.perturbed_pass(self, x, y, sample_weight, variables, e_hat)

    def _branch(self, condition, if_true, if_false):
        """`if_true()` or `if_false()` (each a `PassResult`) by `condition`.

        A tensor `condition` chooses inside the compiled step. Each branch
        runs in a scope of its own and returns the state it leaves, which is
        then assigned. On GPU and TPU `jax.lax.cond` runs only the chosen
        branch; XLA:CPU runs the convolutions of a conditional's branches
        several times slower than the same ops outside one, so on the CPU both
        branches run and the chosen result and state are selected (the
        numbers are the chosen branch's; the one-pass saving is not made).
        """
        if isinstance(condition, bool):
            return (if_true if condition else if_false)()
        state = scopes.state_variables(self)

        def branch(function):
            def run(_=None):
                with scopes.nested_scope(state) as scope:
                    result = function()
                values = [_value_in(scope, v, None) for v in state]
                return (result.loss, list(result.gradients)), values

            return run

        def chosen():
            return jax.lax.cond(condition, branch(if_true), branch(if_false), None)

        def both():
            return jax.tree.map(
                lambda a, b: keras.ops.where(condition, a, b),
                branch(if_true)(),
                branch(if_false)(),
            )

        (loss, gradients), values = jax.lax.platform_dependent(cpu=both, default=chosen)
        scopes.assign_all(state, values)
        return passes.PassResult(loss, gradients, [])

    def _after(self, tensors, function):
        return function()  # JAX orders by data flow

    def _same_rows_checks(self, pairs):  # shapes are static under JAX
        raise AssertionError("unreachable: batch shapes are known when tracing on JAX")

    def _batch_rows(self, x):
        return passes.batch_rows(x)

    def _check_distribution_support(self):
        distribution = keras.distribution.distribution()
        devices = len(getattr(distribution, "_device_mesh", None).devices.flatten()) if (
            distribution is not None
        ) else 1
        if devices > 1 and not self.sync_perturbation:
            raise ValueError(
                f"{type(self).__name__}: under a `keras.distribution` over {devices} devices "
                "on JAX, a step computes on the global batch, so ε̂ comes from the global "
                "gradient: pass `sync_perturbation=True` (the run then equals one device's "
                "on the global batch). For the SAM paper's ε̂ per device, pass it with "
                f"`num_batch_splits={devices}` (m-sharpness: each contiguous share of the "
                "batch, one device's, climbs on its own). Received: sync_perturbation=False."
            )


def _value_in(scope, variable, default):
    value = scope.get_current_value(variable)
    return default if value is None else value
