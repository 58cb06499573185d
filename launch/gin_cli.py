"""Command-line gin handling shared by the launch scripts (t5x conventions; the library never imports gin).

    --gin_file=FILE        repeatable; looked up as given, then in gin/ and the working directory
    --gin_bindings=BIND    repeatable, e.g. --gin_bindings="NUM_ITERATIONS = 20"
    --gin.NAME=VALUE       shorthand for --gin_bindings="NAME = VALUE"
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import re

import gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "gin")


class ConfigError(SystemExit):
    """Exits with one clear sentence instead of a stack trace."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def parse_args(argv, description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
    shorthand = [a for a in argv if a.startswith("--gin.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--gin.")])
    for item in shorthand:
        name, sep, value = item[len("--gin."):].partition("=")
        if not sep:
            raise ConfigError(f"{item!r} needs a value: write --gin.{name}=VALUE.")
        args.gin_bindings.append(f"{name} = {value}")
    if not args.gin_file:
        raise ConfigError("no --gin_file given; for example --gin_file=quickstart.gin "
                          f"(files in {GIN_DIR}).")
    return args


def _resolve(path: str) -> str:
    for candidate in (path, os.path.join(GIN_DIR, path), os.path.join(os.getcwd(), path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    known = sorted(f for f in os.listdir(GIN_DIR) if f.endswith(".gin"))
    raise ConfigError(f"gin file {path!r} not found (looked in {GIN_DIR} and the working "
                      f"directory); known files: {', '.join(known)}.")


MACRO = re.compile(r"[A-Za-z_]\w*")


def _loaded_text(files: list) -> str:
    """The text of the given gin files and of every file they include."""
    texts, seen, stack = [], set(), list(files)
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
        for include in re.findall(r"^include\s+['\"]([^'\"]+)['\"]", texts[-1], re.M):
            try:
                stack.append(_resolve(include))
            except ConfigError:  # gin itself names a missing include
                pass
    return "\n".join(texts)


def _check_macros(args, files: list) -> None:
    """A --gin.NAME=... (or binding) that sets a macro no loaded file declares or uses is a typo: gin would
    define a new, unused macro and run the default without a word (--gin.NUM_ITERATONS=3)."""
    text = _loaded_text(files)
    known = set(re.findall(r"%([A-Za-z_]\w*)(?![\w.])", text)) | set(re.findall(r"^([A-Za-z_]\w*)\s*=", text, re.M))
    for binding in args.gin_bindings:
        name = binding.partition("=")[0].strip()
        if MACRO.fullmatch(name) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known macros: {', '.join(sorted(known))}."
            raise ConfigError(f"--gin.{name} sets a macro that none of {', '.join(args.gin_file)} (or the files "
                              f"they include) declares or uses; {hint}")


def parse(args) -> None:
    """Parses gin files and bindings, turning gin's errors into one sentence."""
    gin.add_config_file_search_path(GIN_DIR)
    files = [_resolve(f) for f in args.gin_file]
    _check_macros(args, files)
    logging.disable(logging.ERROR)  # gin logs a "Path not found" for every search-path miss of an include
    try:
        gin.parse_config_files_and_bindings(files, args.gin_bindings)
    except (ValueError, SyntaxError, ImportError) as e:
        message = str(e).strip().splitlines()[0]
        required = re.match(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", message)
        if required:
            name = required.group(1)
            message = (f"the gin macro {name} is required by {', '.join(args.gin_file)} but not set; "
                       f"pass --gin.{name}=VALUE")
        unknown = re.match(r"No configurable matching '([\w.]+)'", message)
        if unknown:
            message = message.rstrip(".") + _closest_configurables(unknown.group(1))
        raise ConfigError(f"bad gin configuration: {message}") from None
    finally:
        logging.disable(logging.NOTSET)


def _closest_configurables(name: str) -> str:
    """"; did you mean ..." with the registered configurables closest to a misspelt one, e.g.
    sampling.SamplingConfig -> policy.SamplingConfig."""
    import gin.config
    known = sorted({sel for sel in gin.config._REGISTRY._selector_map if "." in sel})  # module.Name forms
    tail = name.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] == tail] or difflib.get_close_matches(name, known, n=3)
    close = [gin.config._REGISTRY.minimal_selector(k) for k in close[:3]]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def query_macro(name: str, args):
    """The value of a macro the launcher needs; unset (an overlay such as smoke.gin given alone), one
    sentence saying which files to combine."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        raise ConfigError(f"the gin macro {name} is not set by {', '.join(args.gin_file)}: an overlay (smoke.gin, "
                          "grpo.gin, models/*.gin) goes after a domain file, e.g. --gin_file=math.gin "
                          "--gin_file=smoke.gin") from None


def run_workdir(args) -> str:
    """The run's directory: WORKDIR with {domain} / {method} filled in."""
    from exit_jax.training import loop
    workdir = loop.resolve_workdir(*(query_macro(name, args) for name in ("WORKDIR", "DOMAIN", "METHOD")))
    if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"WORKDIR {workdir} is a file, not a directory; choose another WORKDIR.")
    return workdir


def write_operative_config(workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    import jax
    if jax.process_index():  # several processes: the first writes it
        return
    with open(os.path.join(workdir, "config.gin"), "w", encoding="utf-8") as f:
        f.write(gin.config_str())


def call(fn):
    """Calls `fn` with its gin bindings. User mistakes (a missing argument, a bad path or value, a
    checkpoint from another run) end with their one-sentence message; EXIT_JAX_TRACEBACK=1 shows the
    full trace instead."""
    try:
        return gin.get_configurable(fn)()
    except TypeError as e:
        if os.environ.get("EXIT_JAX_TRACEBACK"):
            raise
        if "missing" in str(e) and "required" in str(e):
            raise ConfigError(f"{fn.__module__}.{fn.__name__}: {e}; bind it in a .gin file "
                              "or with --gin_bindings.") from None
        where = re.search(r"In call to configurable '(\w+)'", str(e))
        if where:  # a value of the wrong type reached a config's checks, e.g. NUM_ITERATIONS="'abc'"
            raise ConfigError(f"a {where.group(1)} setting has the wrong type ({str(e).splitlines()[0]}); "
                              f"check the values bound to {where.group(1)} and the macros it uses") from None
        raise
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("EXIT_JAX_TRACEBACK"):
            raise
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def tune_malloc() -> None:
    """Keep freed memory in the process (glibc): by default glibc returns large freed blocks to the OS
    and page-faults them back in on the next jitted call (measured on 2 CPU cores: the tiny study
    model's 64+-row sampling and updates 2-3x slower, SmolLM2's micro-batched update ~8% slower). One
    arena for all threads, so that what one thread frees (the update compiling ahead on its own thread,
    XLA's workers) serves the others instead of staying apart (bench_e2e's peak RSS 5.57 -> 5.27 GB,
    same speed). Same effect as MALLOC_MMAP_THRESHOLD_=32M MALLOC_TRIM_THRESHOLD_=2G MALLOC_TOP_PAD_=1G
    MALLOC_ARENA_MAX=1 in the environment; values a user set there win. No-op off glibc."""
    import ctypes
    import ctypes.util
    settings = {"MALLOC_TRIM_THRESHOLD_": (-1, 2**31 - 1), "MALLOC_TOP_PAD_": (-2, 1 << 30),
                "MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20), "MALLOC_ARENA_MAX": (-8, 1)}  # glibc's M_* numbers
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    for env, (param, value) in settings.items():
        if env not in os.environ:
            mallopt(ctypes.c_int(param), ctypes.c_int(value))


def enable_compilation_cache() -> None:
    """Persist XLA executables across runs: a resumed or repeated run skips most of the minute of
    compiling the sampler and the update (on 2 CPU cores). EXIT_JAX_COMPILATION_CACHE sets the
    directory; an empty value turns the cache off."""
    path = os.environ.get("EXIT_JAX_COMPILATION_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "exit_jax", "xla"))
    if path:
        import jax
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def maybe_initialize_distributed() -> None:
    """Several processes (docs/tpu.md): on a multi-host TPU slice or under SLURM jax.distributed finds
    the coordinator and its peers by itself; anywhere else (CPU hosts, a custom cluster) set
    JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process."""
    if not any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                         "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID")):
        return
    import jax
    numbers = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            try:
                numbers[key] = int(os.environ[name])
            except ValueError:
                raise ConfigError(f"{name}={os.environ[name]!r} must be a whole number.") from None
    # Collectives between the processes' CPU devices (the rollout exchange, a CPU-only run) go over gloo;
    # accelerators use their own interconnect whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**numbers)
