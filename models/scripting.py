"""Scripting the zoo's tensor entry point: ``torch.jit.script`` of ``forward_batched``.

Every zoo detector's ``forward_batched(images, image_sizes, output_sizes)`` (and all it
calls) is written so that ``torch.jit.script`` compiles it: typed signatures
(``Dict[str, Tensor]``, ``List[Tensor]``), the settings inference reads copied from
the config dataclasses into plain module attributes, optional heads tested with
``hasattr`` (static in TorchScript), and the list-API / training code (Instances,
ImageList, losses) kept out of the compiled path with ``@torch.jit.unused``.

:class:`BatchedEntry` is the module that gets scripted: its ``forward`` is the
detector's ``forward_batched``. :func:`script_batched` scripts it without compiling
the detector's own list-API ``forward`` (which takes python dicts and returns
Instances: scripting that is ``dexport.scripting_with_instances``' job); the
submodules' ``forward`` methods are compiled as ``torch.jit.script`` always does.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConfigSettings", "BatchedEntry", "script_batched"]


class ConfigSettings:
    """Mixin for a module configured by a (frozen) config dataclass ``self.cfg`` whose
    inference reads some of its settings: TorchScript cannot read the dataclass, so
    ``config_settings(cfg)`` names the settings, and assigning ``cfg`` (in ``__init__``,
    or later, e.g. ``m.cfg = dataclasses.replace(m.cfg, score_thresh=0.9)``) copies them
    onto the module as plain attributes. Eager, traced and scripted code read those."""

    __jit_unused_properties__ = ["cfg"]  # scripted code reads the copied settings only

    def config_settings(self, cfg) -> dict:
        """{attribute name: value} of the settings inference reads from ``cfg``."""
        raise NotImplementedError

    @property
    def cfg(self):
        return self._cfg

    @cfg.setter
    def cfg(self, cfg) -> None:
        self._cfg = cfg
        for name, value in self.config_settings(cfg).items():
            setattr(self, name, value)


class BatchedEntry(nn.Module):
    """``forward(images, image_sizes, output_sizes)`` = ``model.forward_batched(...)``
    (detection_io's formats), so the batched entry point can be scripted or traced as
    a module's ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor,
                output_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_batched(images, image_sizes, output_sizes)


def script_batched(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(BatchedEntry(model))``, except that ``model.forward`` (the
    list API) is not compiled: ``forward_batched`` is compiled because the entry calls
    it, and every submodule's ``forward`` as usual. The result can be saved with
    ``torch.jit.save`` and loaded without dexport."""

    def methods_to_compile(module: nn.Module) -> list[str]:
        if module is model:
            return []  # its methods are compiled on demand, from BatchedEntry.forward
        return torch.jit._recursive.infer_methods_to_compile(module)

    return torch.jit._recursive.create_script_module(BatchedEntry(model), methods_to_compile)
