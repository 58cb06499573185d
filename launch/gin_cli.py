"""Command-line gin handling shared by the launch scripts (t5x conventions; the library never imports gin).

    --gin_file=FILE        repeatable; looked up as given, then in gin/ and the working directory
    --gin_bindings=BIND    repeatable, e.g. --gin_bindings="NUM_ITERATIONS = 20"
    --gin.NAME=VALUE       shorthand for --gin_bindings="NAME = VALUE"
"""
from __future__ import annotations

import argparse
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


def parse(args) -> None:
    """Parses gin files and bindings, turning gin's errors into one sentence."""
    gin.add_config_file_search_path(GIN_DIR)
    files = [_resolve(f) for f in args.gin_file]
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
        raise ConfigError(f"bad gin configuration: {message}") from None
    finally:
        logging.disable(logging.NOTSET)


def write_operative_config(workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.gin"), "w", encoding="utf-8") as f:
        f.write(gin.config_str())


def call(fn):
    """Calls `fn` with its gin bindings. User mistakes (a missing argument, a bad path or value, a
    checkpoint from another run) end with their one-sentence message; EXIT_JAX_TRACEBACK=1 shows the
    full trace instead."""
    try:
        return gin.get_configurable(fn)()
    except TypeError as e:
        if "missing" in str(e) and "required" in str(e) and not os.environ.get("EXIT_JAX_TRACEBACK"):
            raise ConfigError(f"{fn.__module__}.{fn.__name__}: {e}; bind it in a .gin file "
                              "or with --gin_bindings.") from None
        raise
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("EXIT_JAX_TRACEBACK"):
            raise
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def tune_malloc() -> None:
    """Keep freed memory in the process (glibc): by default glibc returns large freed blocks to the OS
    and page-faults them back in on the next jitted call (measured on 2 CPU cores: the tiny study
    model's 64+-row sampling and updates 2-3x slower, SmolLM2's micro-batched update ~8% slower). Same
    effect as MALLOC_MMAP_THRESHOLD_=32M MALLOC_TRIM_THRESHOLD_=2G
    MALLOC_TOP_PAD_=1G in the environment; values a user set there win. No-op off glibc."""
    import ctypes
    import ctypes.util
    settings = {"MALLOC_TRIM_THRESHOLD_": (-1, 2**31 - 1), "MALLOC_TOP_PAD_": (-2, 1 << 30),
                "MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20)}  # glibc's M_* parameter numbers
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
    """Multi-host TPU/GPU: jax.distributed picks the coordinator up from the cluster environment."""
    if any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                     "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID")):
        import jax
        jax.distributed.initialize()
