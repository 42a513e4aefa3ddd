"""Cells named by import path: `config.model.name = "module:Class"`.

Two kinds of class qualify (`KINDS`):

* a `RecurrentCell` subclass (mnist_jax.models.base): used directly, like a registered
  cell (the fast path); its settings are its `OPTIONS`, validated the same way.
* a flax `nn.RNNCellBase` subclass: `FlaxCellLayer` runs it with `nn.RNN`, its
  `features` = `model.hidden_size`; its other str/int/float/bool constructor arguments
  are settings (callables such as gate_fn keep their defaults).

Settings live in `config.model.options.external` (the experiment file adds keys; the
command line overrides them). The module is imported by name, else from
`model.cell_file` (recorded by `config.resolve`, so a restored workdir finds it from
any process or folder), else beside the experiment files this process loaded.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from typing import Any, Sequence

import flax.linen as nn

from mnist_jax.errors import ConfigError
from mnist_jax.models.base import HasOptions, RecurrentCell
from mnist_jax.models.flax_layer import FlaxCellLayer

# Where an import-path cell's settings live (a dotted key cannot hold "module:Class").
OPTIONS_KEY = "external"
WHERE = f"config.model.options.{OPTIONS_KEY}"
EXPECTED = ("a 'module:Class' import path of a mnist_jax.models.RecurrentCell subclass "
            "or a flax.linen.RNNCellBase subclass (e.g. 'flax.linen:GRUCell')")
SCALARS = (str, int, float, bool)
_REQUIRED = inspect.Parameter.empty


def is_import_path(name: Any) -> bool:
  """Whether `model.name` is an import path rather than a registered cell's name."""
  return isinstance(name, str) and ":" in name


def options_key(name: str) -> str:
  """The key of `model.options` that holds the settings of cell `name`."""
  return OPTIONS_KEY if is_import_path(name) else name


# -- Settings. -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Argument:
  """A constructor argument of an import-path cell.

  Attributes:
    kind: the type a config value must have; None: the config cannot set it.
    default: its default, or `_REQUIRED`.
  """
  kind: type | None
  default: Any = _REQUIRED

  @property
  def required(self) -> bool:
    return self.default is _REQUIRED

  def accepts(self, value: Any) -> bool:
    """`value` has the argument's type (an int serves for a float; a bool is no int)."""
    if value is None and self.default is None:
      return True
    if self.kind is bool or isinstance(value, bool):
      return self.kind is bool and isinstance(value, bool)
    if self.kind is float:
      return isinstance(value, (int, float))
    return isinstance(value, self.kind)

  def describe(self) -> str:
    kind = self.kind.__name__ if self.kind else "?"
    return f"{kind}, required" if self.required else f"{kind}, default {self.default!r}"


def _scalar_type(annotation: Any) -> type | None:
  """str/int/float/bool for those annotations (also as strings), else None."""
  by_name = {t.__name__: t for t in SCALARS}
  if isinstance(annotation, str):
    return by_name.get(annotation)
  return annotation if annotation in SCALARS else None


def _flax_argument(parameter: inspect.Parameter) -> Argument:
  default = parameter.default
  if default is _REQUIRED:
    return Argument(_scalar_type(parameter.annotation))
  return Argument(type(default) if type(default) in SCALARS else None, default)


# -- The kinds of class an import path may name. -------------------------------------
class RecurrentCellKind:
  """A `RecurrentCell` subclass: used as it is, with its `OPTIONS`."""
  what = "RecurrentCell subclass"

  def accepts(self, cls: type) -> bool:
    return issubclass(cls, RecurrentCell)

  def arguments(self, cls: type) -> dict[str, Argument]:
    return {key: Argument(option.value_type(), option.default)
            for key, option in cls.OPTIONS.items()}

  def check(self, cls: type, values: dict[str, Any]) -> None:
    check_option_values(cls, values, WHERE)

  def layer(self, cls: type, values: dict[str, Any]) -> tuple[type, tuple]:
    return cls, tuple(sorted(values.items()))


class FlaxCellKind:
  """A flax `nn.RNNCellBase` subclass: run by `FlaxCellLayer`."""
  what = "flax.linen.RNNCellBase subclass"
  # Set by the layer (features) or by flax (parent, name), never by the config.
  RESERVED = ("features", "parent", "name")

  def accepts(self, cls: type) -> bool:
    return issubclass(cls, nn.RNNCellBase)

  def arguments(self, cls: type) -> dict[str, Argument]:
    parameters = inspect.signature(cls).parameters
    if "features" not in parameters:
      raise ConfigError(f"config.model.name: flax cell {cls.__qualname__} must take "
                        f"`features` (set from config.model.hidden_size); it takes "
                        f"{', '.join(parameters) or 'nothing'}.")
    return {name: _flax_argument(p) for name, p in parameters.items()
            if name not in self.RESERVED}

  def check(self, cls: type, values: dict[str, Any]) -> None:
    del cls, values  # The signature says it all.

  def layer(self, cls: type, values: dict[str, Any]) -> tuple[type, tuple]:
    return FlaxCellLayer, (("cell_type", cls),
                           ("cell_kwargs", tuple(sorted(values.items()))))


KINDS = (RecurrentCellKind(), FlaxCellKind())


# -- Option checks shared with registered cells. -------------------------------------
def check_option_values(cell: type[HasOptions], values: dict[str, Any],
                        where: str) -> None:
  """Raises ConfigError naming the first option of `cell` that its rules refuse."""
  for key, option in cell.OPTIONS.items():
    value = values.get(key, option.default)
    if option.valid is not None and not option.valid(value):
      raise ConfigError(f"{where}.{key}={value!r} must be "
                        f"{option.requirement or 'valid'}.")
  problem = cell.options_error({**{k: o.default for k, o in cell.OPTIONS.items()},
                                **values})
  if problem:
    raise ConfigError(f"{where}: {problem}.")


def _accepted(arguments: dict[str, Argument]) -> str:
  settable = [f"{k} ({a.describe()})" for k, a in arguments.items() if a.kind]
  return ("it accepts " + "; ".join(settable) if settable else
          "it has no argument the config can set") + (
      " (only str, int, float and bool arguments can be set from a config)")


def check_values(name: str, cls: type, kind, values: dict[str, Any]) -> None:
  """Raises ConfigError for an unknown, unsettable, mistyped or missing argument."""
  arguments = kind.arguments(cls)
  for key, value in values.items():
    argument = arguments.get(key)
    if argument is None:
      raise ConfigError(f"{WHERE}.{key}: {name} takes no argument {key!r}; "
                        f"{_accepted(arguments)}.")
    if argument.kind is None:
      raise ConfigError(f"{WHERE}.{key}: {name}'s argument {key!r} cannot be set from "
                        f"a config; {_accepted(arguments)}.")
    if not argument.accepts(value):
      raise ConfigError(f"{WHERE}.{key}={value!r} must be a {argument.kind.__name__} "
                        f"for {name}; {_accepted(arguments)}.")
  for key, argument in arguments.items():
    if argument.required and key not in values:
      raise ConfigError(f"{WHERE}.{key} is missing: {name} requires it; "
                        f"{_accepted(arguments)}.")
  kind.check(cls, values)


def defaults(cls: type, kind) -> dict[str, Any]:
  """The settable arguments' defaults, what `config.resolve` fills in."""
  return {key: argument.default for key, argument in kind.arguments(cls).items()
          if argument.kind and not argument.required}


# -- Finding the class. --------------------------------------------------------------
# Modules loaded from a file, by real path: each file is executed once per process.
_FILE_MODULES: dict[str, types.ModuleType] = {}


def split(name: str) -> tuple[str, str]:
  """'pkg.module:Class' -> ('pkg.module', 'Class'); ConfigError if malformed."""
  module, _, attr = name.partition(":")
  if not (attr.isidentifier() and all(p.isidentifier() for p in module.split("."))):
    raise ConfigError(f"config.model.name={name!r} is not a valid import path; give "
                      f"{EXPECTED}, or a registered cell's name.")
  return module, attr


def _module_from_file(path: str) -> types.ModuleType:
  """Executes the Python file `path` once, under a private module name.

  The name is unique per file, so two `my_cells.py` in different folders (two
  experiments in one process, as in the tests) never stand in for each other, and a
  file loaded here never hides a module importable by name.
  """
  path = os.path.realpath(path)
  if path not in _FILE_MODULES:
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    name = f"_mnist_jax_cells_{digest}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Dataclasses (flax modules) look their module up here.
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise
    _FILE_MODULES[path] = module
  return _FILE_MODULES[path]


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A parent package of a dotted name is missing.
    return False


def _find_module(name: str, module: str, cell_file: str | None,
                 search_dirs: Sequence[str]) -> types.ModuleType:
  """By name; else (a top-level module only) `cell_file`, then `<dir>/<module>.py` for
  each search dir. A dotted module is part of a package: importable by name or not at
  all (one file of a package, executed alone, would lose its package)."""
  candidates = [cell_file] if cell_file else []
  candidates += [os.path.join(folder, module + ".py") for folder in search_dirs]
  candidates = [] if "." in module else candidates
  try:
    if _importable(module):
      return importlib.import_module(module)
    for path in candidates:
      if os.path.isfile(path):
        return _module_from_file(path)
  except Exception as e:  # The user's module failed while importing: say where.
    detail = str(e).splitlines()[0] if str(e) else ""
    raise ConfigError(f"config.model.name={name!r}: importing {module} failed "
                      f"({type(e).__name__}: {detail}).") from None
  looked = f" nor at {', '.join(candidates)}" if candidates else ""
  raise ConfigError(f"config.model.name={name!r}: module {module!r} is not importable "
                    f"by name{looked}; put {module.split('.')[0]} beside the experiment "
                    f"file or on PYTHONPATH (or set config.model.cell_file), and give "
                    f"{EXPECTED}.")


@dataclasses.dataclass(frozen=True)
class Found:
  """An import-path cell, loaded.

  Attributes:
    cls: the class named.
    kind: the entry of `KINDS` it belongs to.
    cell_file: what `model.cell_file` records: the absolute path of a top-level
      module's .py file (a fresh process may fail to import it by name: it sat beside
      the experiment file, or on a PYTHONPATH set only for training); None for a
      package's module, which only loads by name.
  """
  cls: type
  kind: Any
  cell_file: str | None


def find(name: str, cell_file: str | None = None,
         search_dirs: Sequence[str] = ()) -> Found:
  """Loads the class `name` ("module:Class") names; ConfigError saying what is wrong."""
  module_name, attr = split(name)
  module = _find_module(name, module_name, cell_file, search_dirs)
  file = getattr(module, "__file__", None)
  where = f"{module_name} ({file})" if file else module_name
  if not hasattr(module, attr):
    raise ConfigError(f"config.model.name={name!r}: module {where} has no attribute "
                      f"{attr!r}; give {EXPECTED}.")
  cls = getattr(module, attr)
  if not isinstance(cls, type):
    raise ConfigError(f"config.model.name={name!r} is a {type(cls).__name__}, not a "
                      f"class; give {EXPECTED}.")
  kind = next((k for k in KINDS if k.accepts(cls)), None)
  if kind is None:
    bases = ", ".join(b.__name__ for b in cls.__mro__[1:-1]) or "object"
    raise ConfigError(f"config.model.name={name!r} is a class (bases: {bases}), "
                      f"neither a {KINDS[0].what} nor a {KINDS[1].what}; give "
                      f"{EXPECTED}.")
  top_level = "." not in module_name and (file or "").endswith(".py")
  return Found(cls, kind, os.path.abspath(file) if top_level else None)


# -- What the registry calls. --------------------------------------------------------
def complete(model_config, search_dirs: Sequence[str]) -> None:
  """At resolve time: records `model.cell_file` and fills in default settings.

  Args:
    model_config: `config.model`, unlocked, naming an import-path cell.
    search_dirs: folders of the experiment files loaded (where a module may sit).
  """
  found = find(model_config.name, model_config.cell_file, search_dirs)
  model_config.cell_file = found.cell_file
  options = model_config.options[OPTIONS_KEY]
  for key, value in defaults(found.cls, found.kind).items():
    if key not in options:
      options[key] = value


def check(model_config, search_dirs: Sequence[str] = ()) -> None:
  """Raises ConfigError unless the import-path cell loads and takes its settings."""
  found = find(model_config.name, model_config.cell_file, search_dirs)
  check_values(model_config.name, found.cls, found.kind,
               model_config.options[OPTIONS_KEY].to_dict())


def layer(model_config) -> tuple[type[HasOptions], tuple[tuple[str, Any], ...]]:
  """(layer class, its constructor options) for an import-path `config.model`."""
  found = find(model_config.name, model_config.cell_file)
  return found.kind.layer(found.cls, model_config.options[OPTIONS_KEY].to_dict())
