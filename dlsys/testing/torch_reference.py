"""The front end's convolutional models in PyTorch, for tests and benchmarks only (dlsys never
imports PyTorch on its own paths): same layer order, so the same state-dict names, and the
weights dlsys initialised."""

from __future__ import annotations

import numpy as np


def torch_model(name: str, state: dict[str, np.ndarray]):
    """``lenet`` or ``cnn`` (``dlsys.frontend.models``) as a ``torch.nn.Sequential`` holding
    ``state``."""
    import torch
    from torch import nn

    if name == "lenet":
        layers = [nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                  nn.Linear(84, 10)]
    elif name == "cnn":
        layers = []
        for fan_in, fan_out in ((1, 32), (32, 64)):
            layers += [nn.Conv2d(fan_in, fan_out, 3, padding=1), nn.BatchNorm2d(fan_out),
                       nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)]
    else:
        raise ValueError(f"no PyTorch twin of model {name!r}")
    model = nn.Sequential(*layers)
    # strict=False: dlsys keeps no num_batches_tracked, which momentum-set batch norm ignores.
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    return model
