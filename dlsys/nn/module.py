"""``Module``: the layer above the graph. A module holds parameters and child modules;
calling it on graph nodes builds its part of the graph and returns a node.

Modes: ``train()`` / ``eval()`` set ``training`` on a module and all its children; layers
that behave differently (dropout, batch norm) read it when they are *called*, so build the
training graph in training mode and the inference graph in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dlsys.checks import state_arrays
from dlsys.errors import ArgumentTypeError, ShapeError
from dlsys.graph import Node
from dlsys.ops.placeholder import Parameter


class Module:
    """Base class of every layer and model (see the module docstring)."""

    _layer_types: dict[str, type[Module]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # dlsys's own layers are what a model file may name (dlsys.nn.serialization).
        if cls.__module__.startswith("dlsys.nn."):
            Module._layer_types[cls.__name__] = cls

    @staticmethod
    def layer_types() -> dict[str, type[Module]]:
        return dict(Module._layer_types)

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ structure
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise ArgumentTypeError(f"{type(self).__name__}: call super().__init__() before "
                                    f"assigning attributes")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
            value.name = name
        elif isinstance(value, Module):
            self._modules[name] = value
            # Graph nodes built later name the parameter by its path, e.g. "0.weight".
            for path, param in value._named_values():
                param.name = f"{name}.{path}"
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Parameter) -> None:
        """A tensor of the module's state that no optimiser updates (batch norm's running
        statistics): in ``state_dict``, not in ``parameters()``."""
        self.__setattr__(name, value)
        del self._parameters[name]
        self._buffers[name] = value

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every trainable parameter, each once, by its dotted path (PyTorch's order)."""
        seen: set[int] = set()
        for path, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{path}.{name}" if path else name), param

    def parameters(self) -> list[Parameter]:
        return [param for _, param in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for path, module in self.named_modules(prefix):
            for name, buffer in module._buffers.items():
                yield (f"{path}.{name}" if path else name), buffer

    def _named_values(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Parameters and buffers, module by module: the order of ``state_dict``."""
        own = list(self._parameters.items()) + list(self._buffers.items())
        for name, value in own:
            yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self._modules.items():
            yield from child._named_values(f"{prefix}.{name}" if prefix else name)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer as numpy arrays, keyed by dotted path."""
        return {name: value.numpy() for name, value in self._named_values()}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Copy ``state_dict``'s arrays into the parameters and buffers of the same names.

        Everything is checked before anything is written, so a refused dict changes nothing:
        with ``strict``, missing and unexpected keys are errors; a wrong shape always is.
        The error lists every problem at once.
        """
        if not isinstance(state_dict, dict):
            raise ArgumentTypeError(f"load_state_dict takes a dict of arrays, got "
                                    f"{type(state_dict).__name__}")
        own = dict(self._named_values())
        arrays, problems = state_arrays({name: value.shape for name, value in own.items()},
                                        state_dict, strict)
        if problems:
            raise ShapeError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for name, array in arrays.items():
            own[name].assign(array)

    # ---------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -------------------------------------------------------------- calling
    def forward(self, *inputs: Node) -> Node:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *inputs: Node) -> Node:
        for i, node in enumerate(inputs):
            if not isinstance(node, Node):
                raise ArgumentTypeError(f"{type(self).__name__}: input {i} must be a graph "
                                        f"node (e.g. dlsys.autodiff.Variable), got "
                                        f"{type(node).__name__}")
        return self.forward(*inputs)

    # --------------------------------------------------------- description
    def config(self) -> dict:
        """The constructor arguments that rebuild this layer (for model files)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def __repr__(self) -> str:
        name = type(self).__name__
        if not self._modules:
            return f"{name}({self.extra_repr()})"
        lines = [f"{name}("]
        for child_name, child in self._modules.items():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({child_name}): {text}")
        lines.append(")")
        return "\n".join(lines)


class Sequential(Module):
    """Modules applied in order; children are named ``"0"``, ``"1"``, ... as in PyTorch."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, module in enumerate(modules):
            if not isinstance(module, Module):
                raise ArgumentTypeError(f"Sequential: argument {i} must be a Module, got "
                                        f"{type(module).__name__}")
            setattr(self, str(i), module)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: Node) -> Node:
        for module in self._modules.values():
            x = module(x)
        return x
