"""Command-line entry point.

    python -m mmjax.main --config configs/cgmnist.py:method=vanilla --workdir /tmp/run
    python -m mmjax.main --config configs/cgmnist.py:method=vanilla --print_config

``--config`` takes a config file with ``get_config(arg)``, the text after ``:`` as its
argument, and ``--config.key=value`` overrides; ``--workdir`` holds everything the run writes.
``--verbosity`` sets absl's log level (default -1: warnings; 0: info). ``--print_config`` prints
the resolved config, the JSON a run's ``config.json`` holds, after the checks a run makes before
it writes anything (data set, model, method, optimiser), and trains nothing; it needs no
``--workdir``. The ``mmjax`` console command (:mod:`mmjax.cli`) offers the same as
``mmjax train`` and ``mmjax config``.

A user's mistake (a bad flag, config file, key, value, data set or workdir) prints one line,
``mmjax: error: ...``, on stderr and exits with code 2, before anything in the workdir changes;
a full disk or an unwritable file during training prints one line naming the file (code 2);
a non-finite loss prints one line (code 1). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import logging as logging_std
import re
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from mmjax import config_lib, train
from mmjax.errors import UserError

USAGE = ('usage: python -m mmjax.main --config configs/NAME.py[:ARGS] --workdir DIR '
         '[--config.KEY=VALUE ...] [--verbosity N] [--print_config]')

#: ``errno`` values of an ``OSError`` that come from the machine (disk, permissions), not a bug.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _one_line(message: str) -> str:
  return ' '.join(str(message).split())


def _override_error(argv: Sequence[str], config: Any) -> str | None:
  """Names the first ``--config.a.b=v`` whose key ``config`` lacks, with the valid keys there."""
  for arg in argv:
    match = re.match(r'^--?(?:no)?config\.([^=]+)', arg)
    if not match:
      continue
    node, walked = config, 'config'
    for part in match[1].split('.'):
      keys = list(node.keys()) if hasattr(node, 'keys') else None
      if keys is None:
        return (f'--config.{match[1]}: {walked} is a value ({node!r}), it has no key {part!r}.')
      if part not in keys:
        return (f'--config.{match[1]}: {walked} has no key {part!r}; its keys are '
                f'{sorted(keys)}.')
      node, walked = node[part], f'{walked}.{part}'
  return None


def _reason(error: BaseException) -> BaseException | None:
  """The exception ``error`` was raised from or while handling (None when suppressed)."""
  return error.__cause__ or (None if error.__suppress_context__ else error.__context__)


#: What replaces the old ``distributed = True`` (the key became a section).
OLD_DISTRIBUTED = ('config.distributed is a section: set distributed.enabled = True (and '
                   'distributed.coordinator_address, .num_processes, .process_id, or leave them to '
                   'the cluster\'s environment), e.g. --config.distributed.enabled=True; see '
                   'docs/distributed.md.')


def _config_file_error(error: BaseException) -> str:
  """The user's mistake behind an exception raised while a config file loads, as one line."""
  if "override field 'distributed'" in str(error):
    return f'--config: {OLD_DISTRIBUTED}'
  if isinstance(error, flags.IllegalFlagValueError):
    # ml_collections re-raises get_config's ValueError or TypeError with a traceback in the
    # message; the first exception of the chain is the user's.
    flag = str(error).split(':', 1)[0].replace('flag ', '')
    root = error
    while _reason(root) is not None:
      root = _reason(root)
    return f'{flag}: {root}'
  if isinstance(error, SyntaxError):
    return (f'--config: the config file {error.filename!r} has a syntax error on line '
            f'{error.lineno}: {error.msg}')
  if isinstance(error, OSError):
    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError) and cause.filename:
      return f'--config: {cause.strerror}: {cause.filename!r}'
  return f'--config: the config file raised {type(error).__name__}: {error}'


@dataclasses.dataclass(frozen=True)
class CommandLine:
  """What the command line of a run asks for."""
  config: ml_collections.ConfigDict
  workdir: str | None  # None where the command takes no --workdir or prints the config
  verbosity: int
  print_config: bool = False


def parse_flags(argv: Sequence[str], *, usage: str = USAGE, workdir: bool = True) -> CommandLine:
  """The :class:`CommandLine` of ``argv`` (without the program name).

  ``workdir=True`` takes ``--workdir`` (required unless ``--print_config``) and
  ``--print_config``; ``workdir=False`` takes neither (a command that only resolves the
  config). ``usage`` ends the error messages that concern the flags.

  Raises:
    UserError: a missing, unknown or bad flag, a config file that does not load, an unknown
      override key or a value of the wrong type.
  """
  argv = ['mmjax.main', *argv]
  flag_values = flags.FlagValues()
  if workdir:
    flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and config.json.',
                        flag_values=flag_values)
    flags.DEFINE_bool('print_config', False, 'Print the resolved config and train nothing.',
                      flag_values=flag_values)
  flags.DEFINE_integer('verbosity', -1, 'absl log level: -1 warnings, 0 info, 1 debug.',
                       flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, 'A config file: configs/NAME.py[:ARGS].',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  # ml_collections loads every config file as the module 'config_config' and reuses a loaded
  # one; a fresh module per parse keeps an earlier file's get_config from answering.
  sys.modules.pop('config_config', None)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # one line per mistake: no ml_collections warnings
  try:
    rest = flag_values(argv)
    config = flag_values.config if flag_values['config'].present else None
  except (AttributeError, KeyError) as e:  # ml_collections: an override key the config lacks
    plain = [a for a in argv if not re.match(r'^--?(?:no)?config\.', a)]
    try:
      plain_config = _parse_plain(plain, workdir)
    except Exception as plain_error:  # pylint: disable=broad-except
      raise UserError(_config_file_error(plain_error)) from plain_error
    message = _override_error(argv, plain_config)
    raise UserError(message or f'an override key is not in the config: {e}') from e
  except flags.IllegalFlagValueError as e:
    if str(e).startswith('flag --config.distributed='):
      raise UserError(f'{str(e).split(":", 1)[0].replace("flag ", "")}: {OLD_DISTRIBUTED}') from e
    if 'Error whilst parsing config file' in str(e):
      raise UserError(_config_file_error(e)) from e
    raise UserError(f"{str(e).rstrip('.')}. {usage}") from e
  except flags.Error as e:
    raise UserError(f"{str(e).rstrip('.')}. {usage}") from e
  except Exception as e:  # pylint: disable=broad-except
    # The user's config file did not load, or raised while it ran (anything get_config does).
    raise UserError(_config_file_error(e)) from e
  finally:
    logging.set_verbosity(verbosity)
  if len(rest) > 1:
    raise UserError(f'unexpected arguments {rest[1:]}: flags take the form --name=value. {usage}')
  print_config = workdir and flag_values.print_config
  for name in ('config', *(('workdir',) if workdir and not print_config else ())):
    if not flag_values[name].present:
      raise UserError(f'--{name} is required. {usage}')
  filename = flag_values['config'].config_filename
  if type(config).__name__ == '_ErrorConfig':  # ml_collections defers a file it cannot read
    reason = re.search(r'\[Errno \d+\] [^:]*', str(config._error))  # pylint: disable=protected-access
    raise UserError(f'--config {filename!r}: the config file cannot be read'
                    f'{f" ({reason[0]})" if reason else ""}.')
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f'--config {filename!r}: get_config() returned {type(config).__name__}, '
                    'not an ml_collections.ConfigDict.')
  if workdir and not print_config and not flag_values.workdir:
    raise UserError(f'--workdir is empty. {usage}')
  return CommandLine(config=config, workdir=flag_values.workdir if workdir else None,
                     verbosity=flag_values.verbosity, print_config=print_config)


def _parse_plain(argv: Sequence[str], workdir: bool) -> Any:
  """The config of ``argv`` without its overrides (to name an override's unknown key)."""
  sys.modules.pop('config_config', None)
  flag_values = flags.FlagValues()
  if workdir:
    flags.DEFINE_string('workdir', None, '', flag_values=flag_values)
    flags.DEFINE_bool('print_config', False, '', flag_values=flag_values)
  flags.DEFINE_integer('verbosity', -1, '', flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, sys_argv=list(argv))
  flag_values(list(argv))
  return flag_values.config


#: How Orbax (tensorstore) reports a full disk or a missing permission inside its own errors.
_STORAGE_MESSAGES = ('No space left on device', 'Disk quota exceeded', 'Permission denied',
                     'Read-only file system')


def _chain(error: BaseException | None) -> list[BaseException]:
  """``error`` and the exceptions it was raised from or while handling, outermost first."""
  chain: list[BaseException] = []
  while error is not None and all(error is not seen for seen in chain):
    chain.append(error)
    error = _reason(error)
  return chain


def _environment_error(error: BaseException, workdir: str) -> tuple[str, str] | None:
  """``(file, reason)`` for a full disk or a missing permission in ``error``'s chain, else None.

  Python raises ``OSError`` with an ``errno`` and a file name; Orbax's asynchronous saves raise
  ``ValueError`` s whose messages hold the system's reason and, somewhere in the chain, a path.
  """
  reason = None
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
      if e.filename:
        return str(e.filename), e.strerror or str(e)
      reason = reason or e.strerror or str(e)
    reason = reason or next((m for m in _STORAGE_MESSAGES if m in str(e)), None)
  if reason is None:
    return None
  paths = [m[1] for e in _chain(error)
           for m in [re.search(r'Failed writing:? "(/[^"]+)"', str(e)) or
                     re.search(r'"(/[^"]+)"', str(e))] if m]
  return (paths[0] if paths else workdir), reason


class _StorageErrorFilter(logging_std.Filter):
  """Drops log records about a full disk or a missing permission: ``main`` prints one line."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.exc_info and _environment_error(record.exc_info[1], '') is not None:
      return False
    return not any(m in record.getMessage() for m in _STORAGE_MESSAGES)


def _drop_closed_event_loop(hook):
  """``sys.unraisablehook`` without Orbax's "Event loop is closed" noise after a failed save.

  When an asynchronous save or restore fails (a full disk, a corrupt checkpoint), TensorStore's
  pending callbacks reach Orbax's already closed event loop, and Python prints each as an
  unraisable traceback; the failure itself is reported once, by ``main``.
  """

  def unraisable(info):
    if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == 'Event loop is closed':
      return
    hook(info)

  return unraisable


def print_error(message: Any) -> None:
  """Prints a user's mistake as the one line ``mmjax: error: ...`` on stderr."""
  print(f'mmjax: error: {_one_line(message)}', file=sys.stderr)


#: The flags that ask for help instead of a run.
HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '--helpfull')


def use_absl_logging() -> None:
  """absl's log format on stderr, as ``absl.app.run`` sets it up, without parsing ``sys.argv``."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl logging reads its own flags' defaults
  logging.use_absl_handler()


def resolved_config_json(config: ml_collections.ConfigDict) -> str:
  """The resolved ``config`` as the JSON text a run's ``config.json`` holds.

  First makes the checks :func:`mmjax.train.train_and_evaluate` makes before it writes anything
  in a workdir: the config's keys, then the data set, model, method and optimiser it builds.

  Raises:
    UserError: naming the first bad key or value.
  """
  config_lib.validate(config)
  try:
    train.Trainer(config)
  except UserError:
    raise
  except ValueError as e:
    raise UserError(str(e)) from e
  return config_lib.to_json(config)


def main(argv: Sequence[str] | None = None, *, usage: str = USAGE) -> int:
  """Runs ``python -m mmjax.main`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

  ``usage`` ends the error messages about flags (``mmjax train`` passes its own).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in HELP_FLAGS for a in argv):
    print(USAGE)
    print(__doc__)
    return 0
  use_absl_logging()
  storage_filter = _StorageErrorFilter()
  logging.get_absl_logger().addFilter(storage_filter)
  unraisable_hook = sys.unraisablehook
  sys.unraisablehook = _drop_closed_event_loop(unraisable_hook)
  workdir = ''
  try:
    command_line = parse_flags(argv, usage=usage)
    logging.set_verbosity(command_line.verbosity)
    if command_line.print_config:
      print(resolved_config_json(command_line.config))
      return 0
    workdir = command_line.workdir
    train.train_and_evaluate(command_line.config, workdir)
  except UserError as e:
    print_error(e)
    return 2
  except FloatingPointError as e:
    print_error(e)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    storage = _environment_error(e, workdir)
    if storage is None:
      raise
    print_error(f'cannot write {storage[0]}: {storage[1]}. Free space or fix permissions, then '
                'rerun the same command to resume.')
    # Orbax's background save threads may still fail while the process exits; that is this error.
    logging.set_verbosity(logging.FATAL)
    return 2
  finally:
    logging.get_absl_logger().removeFilter(storage_filter)
    sys.unraisablehook = unraisable_hook
  return 0


if __name__ == '__main__':
  sys.exit(main())
