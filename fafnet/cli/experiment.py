"""The Sacred experiments of train.py and test.py, made from the root config.py.

`make_experiment` gives a fresh Experiment (no state shared between two runs in one process)
whose config is config.py's `cfg` with its named configs. The config file is the checkout's
config.py, or the one FAFNET_CONFIG names (an installed, non-editable copy of the package
falls back to the copy of config.py it ships). Before a run starts, nothing written yet:

- the command line's options are checked as given (`check_updates`): an unknown option, a
  0.5 path such as dataset.eval_fold, an option given twice, or two named configs that set
  the same option are errors naming them;
- the assembled config is checked once (fafnet.runtime.options.check_options) and, for a
  command that runs a model, the model's options against its builder (fafnet.models.registry);
  train.py records the model's options with their defaults filled in;
- the run is recorded (Sacred's FileStorageObserver) in <runs_dir>/<train|test>/<id>/.

`run_commandline` is Sacred's command line with one-line errors: a bad option or input ends
the program with "<program>: error: <what is wrong>" and exit status 2, never a traceback.
"""
import difflib
import importlib.util
import inspect
import logging
import os
import sys
import warnings
from types import ModuleType
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin setuptools<81 in
# requirements.txt keeps it working, so the warning says nothing actionable to users.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import sacred  # noqa: E402
from docopt import DocoptExit, docopt  # noqa: E402
from sacred import SETTINGS  # noqa: E402
from sacred.arg_parser import get_config_updates  # noqa: E402
from sacred.config import ConfigScope, load_config_file  # noqa: E402
from sacred.dependencies import Source  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from sacred.utils import SacredError, apply_backspaces_and_linefeeds  # noqa: E402

from fafnet.io.provenance import PROJECT_ROOT, imported_sources_and_packages, record_dependencies  # noqa: E402
from fafnet.runtime.options import LEGACY_GROUPS, LEGACY_MODEL_OPTIONS, check_options  # noqa: E402

# Sacred's default "fd" capture spawns `tee` processes and fights with pytest's capture;
# "sys" tees sys.stdout/stderr in-process and still fills the run's cout.txt.
SETTINGS.CAPTURE_MODE = "sys"
# run.json lists every project module the run imported and every installed package it
# imported, with its version: the experiment's config hook adds what Sacred's "sys" discovery
# would find (fafnet.io.provenance.imported_sources_and_packages), at a fraction of its cost.
SETTINGS.DISCOVER_SOURCES = "none"
SETTINGS.DISCOVER_DEPENDENCIES = "none"

CONFIG_ENV = "FAFNET_CONFIG"
# The copy of config.py that a non-editable install ships (setup.py's build step).
PACKAGED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "packaged_config.py")
# Options whose value is a dict: `model_options.icm=False` sets one of its entries.
DICT_OPTIONS = ("model_options",)
# Errors that mean "bad option or bad input" (each names what is wrong): one line, exit 2
# (a bug keeps its traceback, exit 1).
USER_ERRORS = (ValueError, OSError, ArithmeticError, SacredError, KeyError)
PRINT_CONFIG = "print_config"


class _ModelOptionsAreDeclared(logging.Filter):
    """Drops Sacred's 'Added new config entry: "model_options.<name>"' warning: a model's options
    are declared by its builder (checked by the registry), not by config.py's empty dict."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith('Added new config entry: "model_options.')


# Sacred logs it on the root logger itself (its default logger), where this filter applies.
if not any(isinstance(f, _ModelOptionsAreDeclared) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_ModelOptionsAreDeclared())


# ----------------------------------------------------------------------------- the config file

def config_file() -> str:
    """The config.py the commands read: $FAFNET_CONFIG, else the checkout's, else the packaged copy."""
    chosen = os.environ.get(CONFIG_ENV)
    if chosen:
        if not os.path.isfile(chosen):
            raise FileNotFoundError(f"{CONFIG_ENV}={chosen}: no such file")
        return os.path.abspath(chosen)
    checkout = os.path.join(PROJECT_ROOT, "config.py")
    return checkout if os.path.isfile(checkout) else PACKAGED_CONFIG


def load_config(path: Optional[str] = None) -> ModuleType:
    """The config module at `path` (default: `config_file()`), freshly imported."""
    path = path or config_file()
    spec = importlib.util.spec_from_file_location("fafnet_run_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("cfg", "NAMED_CONFIGS"):
        if not hasattr(module, name):
            raise ValueError(f"{path}: a config file defines cfg() (the defaults) and NAMED_CONFIGS")
    return module


def default_options(module: Optional[ModuleType] = None) -> Dict:
    """The defaults of config.py (its `cfg` evaluated), without Sacred's run machinery."""
    module = module or load_config()
    return dict(ConfigScope(module.cfg)())


# ----------------------------------------------------------------------------- the command line's options

def check_updates(updates: Mapping, named_configs: Sequence[str], known: Iterable[str],
                  named_scopes: Mapping[str, ConfigScope]) -> None:
    """Refuse, naming it: an option config.py does not define (a 0.5 path such as
    dataset.eval_fold, or an option that became a model option, with its new name), and two
    named configs that set the same option."""
    known = set(known)
    for key in _paths(updates):
        head, _, tail = key.partition(".")
        if tail and head in DICT_OPTIONS:
            continue
        check_not_legacy(key)
        if head not in known:
            if head in LEGACY_MODEL_OPTIONS:
                raise ValueError(f"config option {key}: one of FAF-Net's model options since 0.6 "
                                 f"(model_options.{head}=...)")
            close = difflib.get_close_matches(head, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"config option {key}: no such option{hint}; python train.py print_config lists them")
        if tail:
            raise ValueError(f"config option {key}: {head} is not a dict option; give {head}=...")
    setters: Dict[str, str] = {}
    for name in named_configs:
        for option in named_config_options(name, named_scopes):
            if option in setters and setters[option] != name:
                raise ValueError(f"named configs {setters[option]} and {name} both set {option}; use one "
                                 f"(or set {option} on the command line)")
            setters[option] = name


def check_not_legacy(key: str) -> None:
    """Refuse a 0.5 option path (dataset.eval_fold, model.name), naming the flat option."""
    head, _, tail = key.partition(".")
    if tail and head in LEGACY_GROUPS:
        flat = head if tail == "name" else tail
        raise ValueError(f"config option {key}: options have flat names since 0.6 ({flat}=...); see CHANGELOG.md")


def _paths(updates: Mapping, prefix: str = "") -> List[str]:
    """The dotted paths an update sets (Sacred nests `a.b=1` into {"a": {"b": 1}}); a dict
    option's entries stay below it."""
    paths = []
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path.split(".")[0] not in DICT_OPTIONS:
            paths += _paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def named_config_options(name: str, named_scopes: Mapping[str, ConfigScope]) -> List[str]:
    """The options named config `name` (or a config file, as Sacred allows) sets."""
    if name in named_scopes:
        return [key for key in named_scopes[name]() if not key.startswith("__")]
    if os.path.isfile(name):
        return list(load_config_file(name))
    raise ValueError(f"named config {name!r} does not exist; named configs: {', '.join(named_scopes)}")


def parse_updates(words: Sequence[str]) -> Tuple[Dict, List[str]]:
    """Sacred's `with` words as (config updates, named configs); an option given twice is an
    error (Sacred would keep the last without a word)."""
    seen = set()
    for word in words:
        if "=" in word:
            key = word.split("=", 1)[0].strip()
            if key in seen:
                raise ValueError(f"config option {key} is given twice")
            check_not_legacy(key)   # before Sacred nests it (dataset.name beside dataset=... fails there)
            seen.add(key)
    return get_config_updates(list(words))


# ----------------------------------------------------------------------------- experiments

class Experiment(sacred.Experiment):
    """A Sacred experiment that checks the options it is given before Sacred assembles them."""

    def __init__(self, name: str, defaults_keys: Iterable[str], **kwargs):
        super().__init__(name, **kwargs)
        self.option_names = tuple(defaults_keys)

    def run(self, command_name=None, config_updates=None, named_configs=(), info=None, meta_info=None,
            options=None):
        check_updates(config_updates or {}, named_configs, self.option_names, self.named_configs)
        return super().run(command_name, config_updates, named_configs, info, meta_info, options)


def make_experiment(name: str, main: Callable, runs_subdir: str, command: str,
                    config_path: Optional[str] = None) -> Experiment:
    """A fresh experiment `name` running `main` (its default command; Sacred captures its
    parameters, `model_options` among them), with config.py's defaults and named configs,
    checked once and recorded under <runs_dir>/<runs_subdir>/. `command` ("train" or
    "evaluate") selects the command's own rules."""
    module = load_config(config_path)
    # Git is asked once, for the main file (run.json's commit), not for every source file.
    ex = Experiment(name, default_options(module), base_dir=PROJECT_ROOT, save_git_info=False)
    ex.mainfile = Source.create(inspect.getsourcefile(main), save_git_info=True)
    ex.sources.discard(ex.mainfile)   # the same file found without its git record
    ex.sources.add(ex.mainfile)
    ex.add_source_file(module.__file__)   # the config.py the run's options came from
    record_dependencies(ex)
    ex.config(module.cfg)
    for named in module.NAMED_CONFIGS:
        ex.named_config(named)
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.main(main)

    @ex.config_hook
    def check_and_record(config, command_name, logger):
        # After the config is assembled, before a Run exists: a bad option fails before
        # anything is written, and the run is recorded where runs_dir says.
        if command_name == PRINT_CONFIG:   # every value checked; the command's own rules when it runs
            check_options(config)
            return {}
        check_options(config, command)
        updates = check_model_options(config, command)
        # The engine is imported by now (run_commandline imports it first): run.json lists its
        # sources and packages (the main file keeps its git record: a set keeps its element).
        sources, packages = imported_sources_and_packages(PROJECT_ROOT)
        ex.sources |= sources
        ex.dependencies |= packages
        runs = os.path.join(config["runs_dir"], runs_subdir)
        if os.path.exists(config["runs_dir"]) and not os.path.isdir(config["runs_dir"]):
            raise ValueError(f"config option runs_dir={config['runs_dir']!r} is a file, not a folder")
        ex.observers[:] = [FileStorageObserver(runs)]
        return updates

    return ex


def check_model_options(config: Mapping, command: str) -> Dict:
    """The model's options checked against its builder (fafnet.models.registry; imports torch).
    Training records them with the defaults filled in; evaluation keeps what was given, to
    compare it with the checkpoint's (fafnet.evaluation.protocol)."""
    from fafnet.models import resolve_model_options

    resolved = resolve_model_options(config["model"], config["model_options"])
    return {"model_options": resolved} if command == "train" else {}


def observer_run_dir(run) -> Optional[str]:
    """The folder a Sacred run is being recorded into (None when unobserved)."""
    for observer in run.observers:
        if isinstance(observer, FileStorageObserver) and observer.dir:
            return observer.dir
    return None


# ----------------------------------------------------------------------------- the command line

def run_commandline(ex: Experiment, argv: Optional[Sequence[str]] = None, engine: Optional[str] = None,
                    program: Optional[str] = None):
    """Sacred's command line for `ex` (``[COMMAND] [with UPDATE...] [options]``, --help), with
    errors as one line: a user error (a bad option or input: `USER_ERRORS`) prints
    "<program>: error: ..." and exits with status 2; Ctrl-C or SIGTERM exit 130 or 143.
    `engine`: the module the run's main imports, imported
    first unless the command only prints (so run.json lists its sources)."""
    from fafnet.runtime.runs import Terminated

    argv = list(sys.argv if argv is None else argv)
    program = program or os.path.basename(argv[0])
    short_usage, usage, internal_usage = ex.get_usage(program_name=program)
    try:
        args = docopt(internal_usage, [str(a) for a in argv[1:]], default_help=False)
    except DocoptExit:
        print(short_usage, file=sys.stderr)
        sys.exit(2)
    if args["help"] or args["--help"]:
        print(usage)
        return None
    command = args["COMMAND"] or ex.default_command
    if command not in ex.commands:
        print(f"{program}: error: no command {command!r}; commands: {', '.join(ex.commands)}", file=sys.stderr)
        sys.exit(2)
    try:
        config_updates, named_configs = parse_updates(args["UPDATE"])
        if engine and command != PRINT_CONFIG:
            importlib.import_module(engine)
        return ex.run(command, config_updates, named_configs, info={}, meta_info={}, options=args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:   # Ctrl-C or SIGTERM (fafnet.runtime.runs.sigterm_interrupts)
        advice = getattr(err, "advice", "")
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
        print(f"{program}: {what}; the run is recorded as INTERRUPTED{advice}", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)
