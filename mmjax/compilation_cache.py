"""JAX's persistent compilation cache, on by default: a second start compiles nothing.

XLA's compiled train, eval and init functions are written to a cache folder and read back by
the next run with the same model, shapes, JAX version and device, so a repeated start skips
compilation. The folder is chosen by the environment variable ``MMJAX_COMPILATION_CACHE``:

- unset: ``$XDG_CACHE_HOME/mmjax/jax``, or ``~/.cache/mmjax/jax`` when ``XDG_CACHE_HOME`` is
  unset (if that folder cannot be created or written, a warning, and the run goes on without a
  persistent cache);
- a path: that folder (created when missing; ``~`` is expanded);
- ``off`` (or ``0``, ``false``, ``no``, ``none``, or empty): no persistent cache.

A cache folder set through JAX itself (``jax.config.update('jax_compilation_cache_dir', ...)``
or ``JAX_COMPILATION_CACHE_DIR``) wins over all of these. The cache is safe to delete at any
time; JAX keys every entry by the computation, its shapes, the JAX/XLA version and the device.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from mmjax.errors import UserError

#: The environment variable that moves or turns off the cache.
ENV = 'MMJAX_COMPILATION_CACHE'

#: Values of :data:`ENV` that turn the cache off.
OFF = ('', '0', 'off', 'false', 'no', 'none')

#: Compilations shorter than this are not written to the cache. JAX's default (1 s) would leave
#: out the init and eval functions of the small models, each compiling in well under a second,
#: which together still make most of a start-up (``benchmarks/startup.py``).
MIN_COMPILE_SECONDS = 0.05


def cache_dir() -> str | None:
  """The cache folder :data:`ENV` names (see the module docstring), or None when it is off."""
  value = os.environ.get(ENV)
  if value is None:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'mmjax', 'jax')
  if value.strip().lower() in OFF:
    return None
  return os.path.abspath(os.path.expanduser(value))


def _named() -> str:
  value = os.environ.get(ENV)
  return f'{ENV}={value!r}' if value is not None else f'{ENV} (unset: the default folder)'


def enable() -> str | None:
  """Turns JAX's persistent compilation cache on in :func:`cache_dir`; returns the folder in
  use (None when off). Call it before the first compilation; later calls change nothing.

  The default folder (:data:`ENV` unset) that cannot be created or written gives a warning and
  no cache; a folder the user named gives an error.

  Raises:
    UserError: a folder named by :data:`ENV` cannot be created or written, naming it and :data:`ENV`.
  """
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  path = cache_dir()
  if path is None:
    return None
  problem = None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    problem = f'cannot be created ({e.strerror or e})'
  if problem is None and not os.access(path, os.W_OK | os.X_OK):
    problem = 'is not writable'
  if problem is not None:
    if os.environ.get(ENV) is None:
      # The default folder (e.g. under a read-only home): the run goes on, compiling as before.
      logging.warning('the compilation cache folder %r %s; running without a persistent '
                      'compilation cache (set %s to a writable folder, or to off).',
                      path, problem, ENV)
      return None
    raise UserError(f'{_named()}: the compilation cache folder {path!r} {problem}; set '
                    f'{ENV} to a writable folder, or to off.')
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  jax.config.update('jax_compilation_cache_dir', path)
  return path
