"""Trains a small BatchNorm student with KD from a random teacher of its kind on a folder of image files, streamed
(decoded in the process: the workers' determinism is `test_stream`'s own test).

`python stream_worker.py FOLDER RUN_DIR EPOCHS` prints, as JSON, each member's history and the sum of
every parameter (float64): what `test_stream` compares between a straight run and a killed, resumed one.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from engine_helpers import batchnorm_network

from kdjax.checkpoint import RunCheckpoints
from kdjax.data.images import load_image_folder
from kdjax.engine import Member, Settings, train_members
from kdjax.teacher import Teacher


def main() -> None:
    folder, run_dir, epochs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    data = load_image_folder(folder, size=32)
    settings = Settings(epochs=epochs, batch_size=8, save_every_steps=1, stream_workers=0)
    members = [Member.of("kd", 0), Member.of("kd", 1)]
    network = batchnorm_network()
    programs = train_members(members, network, data.train, data.test, settings,
                             lambda chunk: RunCheckpoints(run_dir / "kd", {"test": "stream"}),
                             teacher=Teacher(network, *network.init(jax.random.key(5))), log=print)
    out = {"history": [r.history for p in programs for r in p.results],
           "sums": [float(sum(np.asarray(leaf[i], np.float64).sum() for leaf in jax.tree.leaves(programs[0].states.params)))
                    for i in range(len(members))]}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
