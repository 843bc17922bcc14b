"""The JAX mechanics of a SAM step: `jax.value_and_grad` inside Keras's stateless step."""
