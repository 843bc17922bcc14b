"""Builds a `ParameterServerStrategy` over an in-process loopback cluster and
tries `SAMModel` and plain Keras `fit` under it; prints JSON.

    python tests/distributed_scripts/parameter_server.py

Run by `tests/unit/test_strategies.py` in a subprocess: a parameter-server cluster
(two workers, one parameter server) lives in the process that starts it.
"""

from __future__ import annotations

import json
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def main() -> None:
    import tensorflow as tf

    ports = free_ports(3)
    cluster = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"],
            "ps": [f"127.0.0.1:{ports[2]}"],
        }
    )
    servers = [  # kept alive while the strategy is used
        tf.distribute.Server(cluster, job_name="worker", task_index=i, protocol="grpc")
        for i in range(2)
    ] + [tf.distribute.Server(cluster, job_name="ps", task_index=0, protocol="grpc")]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)

    import keras
    import numpy as np

    from keras_sam import SAMModel

    result = {"servers": len(servers)}
    with strategy.scope():
        base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        try:
            SAMModel(base)
            result["sam_error"] = None
        except ValueError as error:
            result["sam_error"] = str(error)
        base.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    try:
        base.fit(x, y, epochs=1, verbose=0)
        result["plain_error"] = None
    except Exception as error:  # what plain Keras 3 does under this strategy
        result["plain_error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
