"""The ``mmjax`` console command: one subcommand per job.

    mmjax train  --config configs/NAME.py[:ARGS] --workdir DIR [--config.KEY=VALUE ...]
    mmjax config --config configs/NAME.py[:ARGS] [--config.KEY=VALUE ...]
    mmjax list   [datasets] [methods] [encoders] [--json]
    mmjax report RUN_DIR [RUN_DIR ...] --out REPORT_DIR
    mmjax compare --config configs/NAME.py[:ARGS] --methods M1,M2 --seeds 0,1,2 --workdir DIR
    mmjax prepare NAME --raw DIR --out DIR [--workers N] [--option KEY=VALUE ...]

``python -m mmjax.cli`` is the same command. ``mmjax train`` is ``python -m mmjax.main`` (same
flags, same resume, same one-line errors with exit code 2); ``mmjax config`` prints the resolved
config, the JSON a run's ``config.json`` would hold, after the checks a run makes before it
writes, and trains nothing; ``mmjax list`` lists the registered data sets, methods and encoders
with their options and defaults; ``mmjax report`` is ``python -m mmjax.report``; ``mmjax compare``
runs every method x seed as resumable run directories and writes their comparison
(:mod:`mmjax.compare`); ``mmjax prepare`` turns a data set's raw files into the records its
registered data set reads (:mod:`mmjax.prepare`).

A subcommand is a function ``(argv) -> exit code`` registered with :func:`command`; it handles
its own ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable, Sequence

from mmjax import compare, data, methods, models, prepare, report
from mmjax import main as run_main
from mmjax.errors import UserError

PROG = 'mmjax'


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its name, what it does in one line, and the function that runs it."""
  name: str
  summary: str
  run: Callable[[list[str]], int]


#: Subcommand name -> :class:`Command`, in the order ``mmjax --help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
  """Registers the decorated ``run(argv) -> exit code`` as subcommand ``name``.

  The first line of its docstring is the summary ``mmjax --help`` shows.
  """

  def register(run: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
    if name in COMMANDS:
      raise ValueError(f'mmjax command {name!r} is registered twice.')
    COMMANDS[name] = Command(name, (run.__doc__ or '').strip().split('\n', 1)[0], run)
    return run

  return register


def _wants_help(argv: Sequence[str]) -> bool:
  return any(a in run_main.HELP_FLAGS for a in argv)


# ----- what the registries hold ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered data set, method or encoder: its name, summary and options with defaults."""
  name: str
  summary: str
  options: dict[str, Any]


def _summary(obj: Any) -> str:
  """The first line of ``obj``'s docstring."""
  return (getattr(obj, '__doc__', None) or '').strip().split('\n', 1)[0]


def dataset_entries() -> list[Entry]:
  """The data sets of the registry (:func:`mmjax.data.registered`), with their options' defaults."""
  return [Entry(name, builder.description, dict(builder.options))
          for name, builder in sorted(data.registered().items())]


def method_entries() -> list[Entry]:
  """The methods of the registry ``mmjax.methods.METHODS``, with their ``DEFAULTS``."""
  return [Entry(name, _summary(cls), dict(cls.DEFAULTS))
          for name, cls in sorted(methods.METHODS.items())]


#: The default shown for a constructor argument that has none (it must be given).
REQUIRED = '<required>'


def _field_default(field: dataclasses.Field) -> Any:
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return REQUIRED


def encoder_entries() -> list[Entry]:
  """The encoders of the registry ``mmjax.models.ENCODERS``: their constructor arguments."""
  entries = []
  for name, cls in sorted(models.ENCODERS.items()):
    options = models.registry.encoder_options(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name in options]
    entries.append(Entry(name, _summary(cls), {f.name: _field_default(f) for f in fields}))
  return entries


#: ``mmjax list`` sections: name -> (heading, how a config selects one, the entries).
CATALOGUE: dict[str, tuple[str, str, Callable[[], list[Entry]]]] = {
    'datasets': ('Data sets', 'config.data.name = NAME; options config.data.KEY', dataset_entries),
    'methods': ('Methods', 'configs/X.py:method=NAME or config.method.name = NAME; options '
                'config.method.KEY', method_entries),
    'encoders': ('Encoders', "config.model.encoders.<modality> = {'name': NAME, KEY: VALUE}",
                 encoder_entries),
}


def _plain(value: Any) -> Any:
  """``value`` as JSON-able data (tuples become lists)."""
  return json.loads(json.dumps(value, default=repr))


def catalogue_text(sections: Sequence[str] = tuple(CATALOGUE)) -> str:
  """The ``mmjax list`` text for ``sections``: every entry with its options and defaults."""
  lines = []
  for section in sections:
    heading, selection, entries = CATALOGUE[section]
    lines.append(f'{heading} ({selection}):')
    for entry in entries():
      lines.append(f'  {entry.name}: {entry.summary}')
      lines += [f'      {key} = {value!r}' for key, value in entry.options.items()]
      if not entry.options:
        lines.append('      (no options)')
    lines.append('')
  return '\n'.join(lines).rstrip()


def catalogue_json(sections: Sequence[str] = tuple(CATALOGUE)) -> str:
  """``{section: {name: {'summary': ..., 'options': {key: default}}}}`` as JSON text."""
  return json.dumps({
      section: {e.name: {'summary': e.summary, 'options': _plain(e.options)}
                for e in CATALOGUE[section][2]()}
      for section in sections}, indent=2)


# ----- the subcommands ---------------------------------------------------------------------------
TRAIN_USAGE = (f'usage: {PROG} train --config configs/NAME.py[:ARGS] --workdir DIR '
               '[--config.KEY=VALUE ...] [--verbosity N] [--print_config]')
CONFIG_USAGE = (f'usage: {PROG} config --config configs/NAME.py[:ARGS] [--config.KEY=VALUE ...] '
                '[--verbosity N]')
LIST_USAGE = f'usage: {PROG} list [{"] [".join(CATALOGUE)}] [--json]'

TRAIN_HELP = """
  --config        a config file with get_config(arg); the text after ':' is its argument, a
                  comma-separated list of key=value and bare flags (method=gblend,smoke)
  --config.K=V    overrides a key of the resolved config (--config.optimizer.learning_rate=0.05)
  --workdir       holds config.json, metrics.jsonl, TensorBoard events and checkpoints;
                  rerunning the same command resumes from the latest checkpoint
  --verbosity     absl's log level (default -1: warnings; 0: info)
  --print_config  print the resolved config (as mmjax config does) and train nothing

A mistake prints one line, mmjax: error: ..., and exits with code 2 before the workdir changes.
"""


@command('train')
def run_train(argv: list[str]) -> int:
  """Train and evaluate a config in a workdir; rerunning resumes there."""
  if _wants_help(argv):
    print(TRAIN_USAGE)
    print(TRAIN_HELP)
    print(catalogue_text())
    return 0
  return run_main.main(argv, usage=TRAIN_USAGE)


@command('config')
def run_config(argv: list[str]) -> int:
  """Print the resolved config (the JSON of a run's config.json), checked, without training."""
  if _wants_help(argv):
    print(CONFIG_USAGE)
    print('Prints the config that `mmjax train` with the same --config and overrides would run '
          'and store in config.json, after the checks a run makes before it writes anything.')
    return 0
  run_main.use_absl_logging()
  try:
    command_line = run_main.parse_flags(argv, usage=CONFIG_USAGE, workdir=False)
    print(run_main.resolved_config_json(command_line.config))
  except UserError as e:
    run_main.print_error(e)
    return 2
  return 0


@command('list')
def run_list(argv: list[str]) -> int:
  """List the data sets, methods and encoders with their options and defaults."""
  if _wants_help(argv):
    print(LIST_USAGE)
    return 0
  as_json = '--json' in argv
  sections = [a for a in argv if a != '--json']
  unknown = [s for s in sections if s not in CATALOGUE]
  if unknown:
    run_main.print_error(f'list: {unknown[0]!r} is not a section; valid sections are '
                         f'{list(CATALOGUE)} (and --json). {LIST_USAGE}')
    return 2
  sections = sections or list(CATALOGUE)
  print(catalogue_json(sections) if as_json else catalogue_text(sections))
  return 0


@command('report')
def run_report(argv: list[str]) -> int:
  """Tables and plots from run directories (python -m mmjax.report)."""
  return report.main(argv)


@command('compare')
def run_compare(argv: list[str]) -> int:
  """Run every method x seed of a config as resumable runs, then tabulate and plot them."""
  if _wants_help(argv):
    print(compare.USAGE)
    print(compare.__doc__)
    return 0
  run_main.use_absl_logging()
  return compare.compare(argv)


PREPARE_USAGE = (f'usage: {PROG} prepare NAME --raw DIR --out DIR [--workers N] '
                 '[--examples_per_shard N] [--option KEY=VALUE ...]')

PREPARE_HELP = """
  NAME                  the data set (below)
  --raw                 the folder of the raw files you downloaded (mmjax downloads nothing)
  --out                 the folder for the records: new, empty, or that of an interrupted run of
                        the same command (rerunning it resumes; finished shards are kept)
  --workers             decoding processes (default: the number of CPU cores; 0: none)
  --examples_per_shard  examples per ArrayRecord shard (default 1024)
  --option KEY=VALUE    a data set's option (repeatable)

Files that cannot be decoded are listed in OUT/failures.txt; docs/datasets.md has each data
set's raw files, preprocessing and command. A mistake prints one line, mmjax: error: ..., and
exits with code 2 before OUT changes.
"""


class _PrepareParser(argparse.ArgumentParser):
  """The ``mmjax prepare`` flags; a mistake is a :class:`UserError` (one line, exit code 2)."""

  def error(self, message):
    raise UserError(f'prepare: {message}. {PREPARE_USAGE}')


def _integer_flag(minimum: int) -> Callable[[str], int]:
  """An argparse type: an integer >= ``minimum``."""
  def parse(text: str) -> int:
    if not text.lstrip('-').isdigit() or int(text) < minimum:
      raise argparse.ArgumentTypeError(f'{text!r} must be an integer >= {minimum}')
    return int(text)
  return parse


def preparer_text() -> str:
  """The data sets ``mmjax prepare`` knows, with their options and defaults."""
  lines = ['Data sets (mmjax prepare NAME; options --option KEY=VALUE):']
  for name, entry in sorted(prepare.registered_preparers().items()):
    lines.append(f'  {name}: {entry.description}')
    lines += [f'      {key} = {value!r}' for key, value in entry.options.items()]
    if not entry.options:
      lines.append('      (no options)')
  return '\n'.join(lines)


@command('prepare')
def run_prepare(argv: list[str]) -> int:
  """Turn a data set's raw files into ArrayRecord shards (resumable, in worker processes)."""
  if _wants_help(argv):
    print(PREPARE_USAGE)
    print(PREPARE_HELP)
    print(preparer_text())
    return 0
  parser = _PrepareParser(prog=f'{PROG} prepare', add_help=False, allow_abbrev=False)
  parser.add_argument('name')
  parser.add_argument('--raw', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--workers', type=_integer_flag(0), default=None)
  parser.add_argument('--examples_per_shard', type=_integer_flag(1),
                      default=prepare.core.DEFAULT_EXAMPLES_PER_SHARD)
  parser.add_argument('--option', action='append', default=[])
  try:
    args = parser.parse_args(argv)
    prepare.prepare(args.name, args.raw, args.out, options=args.option, workers=args.workers,
                    examples_per_shard=args.examples_per_shard)
  except UserError as e:
    run_main.print_error(e)
    return 2
  return 0


def usage() -> str:
  """The ``mmjax --help`` text: the subcommands and where to read more."""
  width = max(len(name) for name in COMMANDS)
  lines = [f'usage: {PROG} COMMAND [ARGS ...]   (or python -m mmjax.cli COMMAND ...)', '',
           'commands:']
  lines += [f'  {c.name:<{width}}  {c.summary}' for c in COMMANDS.values()]
  lines += ['', f'{PROG} COMMAND --help shows a command\'s flags; {PROG} list shows the data sets, '
            'methods and encoders with their options and defaults.']
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``mmjax`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv:
    print(usage(), file=sys.stderr)
    return 2
  if argv[0] in run_main.HELP_FLAGS or argv[0] == 'help':
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    run_main.print_error(f'{name!r} is not an mmjax command; the commands are '
                         f'{list(COMMANDS)}. Run {PROG} --help.')
    return 2
  return COMMANDS[name].run(rest)


if __name__ == '__main__':
  sys.exit(main())
