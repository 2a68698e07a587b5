"""The embedded demo: procedural scenes, a small AlexNet-shaped net, its shipped source
network, fine-tuned variants, and the build that makes them.

- :mod:`.profiles` — ``DemoConfig`` and ``PROFILES``, where a build lives, its identity
- :mod:`.scenes` — procedural scenes (source, target and scene tasks), deterministic per seed
- :mod:`.mosaics` — Fashion-MNIST mosaics (the ``fashion`` profile)
- :mod:`.training` — the training loop (pretraining, fine-tuning, scratch)
- :mod:`.source_net` — the shipped source network and its snapshots
- :mod:`.build` — the build itself, its manifest, and the demo's entries in the registries

This package's face imports nothing: import the module you need.
"""
