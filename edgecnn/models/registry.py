"""The model registry and `create_model`, which also takes `package.module:factory`."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType

from torch import nn

from edgecnn.errors import EdgecnnError, first_line
from edgecnn.registry import Registry

models: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return models.register()(fn)


def _cwd_on_path() -> bool:
    cwd = os.path.realpath(os.getcwd())
    return any(os.path.realpath(entry or ".") == cwd for entry in sys.path)


def import_user_module(module_name: str) -> ModuleType:
    """Import `module_name` with the current directory importable, as `python -m` and
    uvicorn's `module:app` have it (the `edgecnn` console script does not: its sys.path
    starts at the script's own directory). The current directory is tried only when the
    module is not found otherwise, and stays on sys.path only when the module came from
    there (its later imports of siblings find them); a library caller's sys.path is left
    alone otherwise. Raises what the import raises; ModuleNotFoundError after both tries."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.partition(".")[0] or _cwd_on_path():
            raise
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        sys.path.remove(cwd)
        raise


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """A registered name, or `package.module:factory` for a model of the user's own,
    imported with the current directory importable (`import_user_module`).

    Raises EdgecnnError for an unknown name, a module that cannot be imported (missing:
    saying where it was looked for, or raising on import: a SyntaxError names its file and
    line), or a factory that is not a function or an nn.Module class."""
    if not isinstance(name, str) or not name.strip():
        raise EdgecnnError(f"model name is empty; known: {', '.join(models)} or "
                           "package.module:factory")
    if ":" not in name:
        return models.get(name)
    module_name, _, attr = name.partition(":")
    if not module_name or not attr.isidentifier():
        raise EdgecnnError(f"model {name!r}: expected package.module:factory")
    try:
        module = import_user_module(module_name)
    except ModuleNotFoundError as exc:
        where = " (looked in the current directory and the Python path)" \
            if exc.name == module_name.partition(".")[0] else ""
        raise EdgecnnError(f"cannot import module {module_name!r} for model {name!r}: "
                           f"{exc}{where}") from None
    except ImportError as exc:
        raise EdgecnnError(f"cannot import module {module_name!r} for model {name!r}: {exc}") \
            from None
    except Exception as exc:  # noqa: BLE001 - the user's module runs on import: any error
        raise EdgecnnError(f"cannot import module {module_name!r} for model {name!r}: "
                           f"{type(exc).__name__}: {first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise EdgecnnError(f"{module_name!r} has no callable {attr!r} (model {name!r})")
    if not (inspect.isfunction(factory) or inspect.isclass(factory)):
        raise EdgecnnError(f"model {name!r}: {attr!r} is a {type(factory).__name__}, not a "
                           "Python function or nn.Module class returning a model")
    return factory


def create_model(name: str, **options) -> nn.Module:
    """Build a model by name. Options a custom factory does not accept are not passed,
    except `padding` and `bn_eps` (see `edgecnn.models.padding`), which are then applied
    to the model it returns."""
    from edgecnn.models.padding import apply_padding, set_batchnorm_eps

    factory = resolve_factory(name)
    params = inspect.signature(factory).parameters
    after: dict = {}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        after = {k: options[k] for k in ("padding", "bn_eps") if k in options and k not in params}
        options = {k: v for k, v in options.items() if k in params}
    required = [p.name for p in params.values() if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in options]
    if required:
        raise EdgecnnError(f"factory {name!r} needs argument(s) {', '.join(required)}; a model "
                           "factory is called with num_classes, in_channels, width_mult, "
                           "small_input only")
    try:
        model = factory(**options)
    except EdgecnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it, not a trace
        raise EdgecnnError(f"factory {name!r} raised {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise EdgecnnError(f"factory {name!r} returned {type(model).__name__}, not an nn.Module")
    if "padding" in after:
        apply_padding(model, after["padding"])
    if "bn_eps" in after:
        set_batchnorm_eps(model, after["bn_eps"])
    return model
