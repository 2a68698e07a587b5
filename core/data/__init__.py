"""What goes into the engine: the model registry (``demo:``, ``tv:`` ids and their weights),
datasets (VOC, SUN397, ImageFolder, Fashion-MNIST, the demo's arrays), image decoding, and
the one registry pattern they share.

- :mod:`.registry` — ``Registry``: register / get / names, with closest-name errors
- :mod:`.models` — model specs, weights with provenance, torchvision and demo builders
- :mod:`.datasets` — image sets and their loaders, looked up by prefix (``DATASETS``)
- :mod:`.imageio` — decoding of uploads and files that never crashes on bad input
"""
