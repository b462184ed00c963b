"""What the tests and the benchmarks share, as a supported part of the package (it sits on top of the layers:
docs/architecture.md). Nothing here is used by the product at run time.

- :mod:`.data`: converted shapes data sets (one split by fraction, or training and held-out sets of their own
  seeds);
- :mod:`.models`: the tiny preset's Mask R-CNN, exported once per process with the product's own export, and
  what the Pusher does with it; small sample images;
- :mod:`.serving`: ``maskrcnn-tfx serve`` as a process on 127.0.0.1, waiting for it, its memory, and the
  hostile requests it must refuse.
"""
