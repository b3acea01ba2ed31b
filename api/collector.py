"""Keep Python's cyclic garbage collector off a worker's request path.

Measured in-process (``loadtests/api_profile``'s process, 25 requests in flight): with the
default thresholds a young collection ran every ~9 requests and a full one every ~1,250, about
60 µs per request in all, a seventh of the CPU. A full collection walks every object the
imports and the apps left: that process holds several app variants (~126k objects, ~56 ms per
full collection); a worker's one app leaves ~108k (32 ms here), and each full collection holds
every request in flight that long. Tuned as below: 0.1-0.3 µs per request.

``tune()`` runs once per worker, after the app is loaded and before it serves (gunicorn's
``post_worker_init``):

- ``gc.freeze()`` moves everything alive then into the permanent generation, which no
  collection walks: full collections only see what was allocated since.
- the young generation's threshold goes from 700 to ``GEN0_THRESHOLD``: a few dozen requests in
  flight keep a few thousand container objects alive, so at 700 every collection walked those
  same live objects again; above that working set collections become rare. Garbage cycles
  (a caught exception and its traceback) wait at most that many allocations longer.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
