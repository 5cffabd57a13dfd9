"""Importing this package registers every merge method: each module in this folder registers its own, so
adding a method is adding its module (and its `merge.<name>` options to params.yaml)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
