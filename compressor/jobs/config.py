"""The prune job's config: the shared options (``compressor.config.PruneOptions``) plus every method's own
(``compressor.methods.options``), each as ``<method>_<field>``. One class for the CLI, recipes, ``config.yaml``
and the resume check; torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import fields

from compressor.config import PruneOptions
from compressor.methods.options import METHOD_OPTIONS


def _method_fields() -> list[tuple[str, object, dataclasses.Field]]:
    out = []
    for method, cls in METHOD_OPTIONS.items():
        for f in fields(cls):
            out.append((f"{method}_{f.name}", f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
    return out


PruneConfig = dataclasses.make_dataclass("PruneConfig", _method_fields(), bases=(PruneOptions,))
PruneConfig.__module__ = __name__
PruneConfig.__doc__ = "Every option of ``compress prune`` (the CLI and YAML recipes fill it)."

#: Options that may differ on --resume (where and how the run executes, not what it computes); every other
#: option changes what a checkpoint means and is fixed (``opt(..., resume="free")`` declares one free).
RESUME_FREE = tuple(f.name for f in fields(PruneConfig) if f.metadata.get("resume") == "free")
RESUME_FIXED = tuple(f.name for f in fields(PruneConfig) if f.name not in RESUME_FREE)
