"""The TensorFlow mechanics of a SAM step: `tf.GradientTape`, `tf.function`, `tf.distribute`."""
