"""``mmjax compare``: every method x seed as an ordinary run directory, then one comparison.

    mmjax compare --config configs/NAME.py[:ARGS] --methods vanilla,gblend,greedy,ogm_ge \\
        --seeds 0,1,2 --workdir DIR [--processes N] [--devices 0,1,...] [--config.KEY=VALUE ...]

A method in ``--methods`` may carry options of its own, ``METHOD:KEY=VALUE[:KEY=VALUE...]``
(e.g. ``--methods vanilla,ogm_ge,ogm_ge:alpha=0.5:noise=none``): any scalar option of that
method (``mmjax list methods``); values are letters, digits and ``._+-``. Its run directories
are ``DIR/METHOD--KEY=VALUE[--KEY=VALUE...]`` (keys sorted), a method without options keeps
``DIR/METHOD``.

Run ``(method, seed)`` is ``python -m mmjax.main --config configs/NAME.py:ARGS,method=M,seed=S
--workdir DIR/M/seed_S [--config.KEY=VALUE ...]`` in a subprocess of its own (a method's options
are appended to the config arguments, ``...,method=M,KEY=VALUE,seed=S``), so it is the
same resumable run directory a single ``mmjax train`` makes: a run whose ``summary.json``
says ``finished`` is skipped, an unfinished one resumes from its latest checkpoint. Up to
``--processes`` runs go at once (default 1); with ``--devices``, each running process sees one
of those accelerators (``CUDA_VISIBLE_DEVICES``), one process per device at a time unless
``--processes`` is larger. Each child's output goes to ``DIR/logs/M_seed_S.log``; one progress
line per run goes to stderr.

When every run is done, :func:`mmjax.report.write_report` writes the comparison table (per
method, best-val and test-at-best-val accuracy per head, mean +- sample std over the seeds,
and the literature's number for that method and data set where a paper reports one,
:mod:`mmjax.literature`) as ``DIR/comparison.md`` and ``DIR/comparison.csv``, and the full
report (per-run table, plots, ``report.md``) into ``DIR/report/``.

Every argument and every run's config are checked before anything starts or is written: a
mistake is one ``mmjax: error:`` line and exit code 2. A run that fails is named with the last
line of its log; the others still run, and the command exits with 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import Sequence

from mmjax import config_lib, literature, methods, metrics
from mmjax import main as run_main
from mmjax import report
from mmjax.errors import UserError

USAGE = ('usage: mmjax compare --config configs/NAME.py[:ARGS] --methods M1,M2[:KEY=VALUE...],... '
         '--seeds S1,S2,... --workdir DIR [--processes N] [--devices D1,D2,...] '
         '[--config.KEY=VALUE ...]')
LOG_DIR = 'logs'
REPORT_DIR = 'report'
OPTION_SEPARATOR = ':'
DIRECTORY_SEPARATOR = '--'
_VALUE = re.compile(r'[A-Za-z0-9_.+-]+')


@dataclasses.dataclass(frozen=True)
class MethodVariant:
  """One entry of ``--methods``: a method and the options it runs with, ``(key, value)`` pairs
  sorted by key, values as given (the config file types them)."""
  name: str
  options: tuple[tuple[str, str], ...] = ()

  @property
  def label(self) -> str:
    """``METHOD[:KEY=VALUE...]``, the canonical ``--methods`` form."""
    return OPTION_SEPARATOR.join([self.name, *(f'{k}={v}' for k, v in self.options)])

  @property
  def directory(self) -> str:
    """``METHOD[--KEY=VALUE...]``: filesystem-safe, and one directory per distinct variant
    (names and keys are identifiers, values never hold ``--``)."""
    return DIRECTORY_SEPARATOR.join([self.name, *(f'{k}={v}' for k, v in self.options)])


def parse_method(text: str) -> MethodVariant:
  """``METHOD[:KEY=VALUE...]`` as a :class:`MethodVariant` (the keys are checked by :func:`plan`,
  once the config file has registered its methods)."""
  name, *items = [part.strip() for part in text.split(OPTION_SEPARATOR)]
  if not name.isidentifier():
    raise UserError(f'--methods: {text!r} does not start with a method name; give '
                    f'METHOD[:KEY=VALUE...], e.g. ogm_ge:alpha=0.5.')
  options = {}
  for item in items:
    key, sep, value = (s.strip() for s in item.partition('='))
    if not sep or not key.isidentifier() or not value:
      raise UserError(f'--methods: {item!r} in {text!r} is not KEY=VALUE; give '
                      f'METHOD[:KEY=VALUE...], e.g. ogm_ge:alpha=0.5.')
    if key in options:
      raise UserError(f'--methods: {text!r} sets {key} twice.')
    if not _VALUE.fullmatch(value) or DIRECTORY_SEPARATOR in value:
      raise UserError(f'--methods: {text!r}: value {value!r} of {key} may only hold letters, '
                      f"digits and '._+-' (not '--').")
    options[key] = value
  return MethodVariant(name, tuple(sorted(options.items())))


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the comparison: its method, seed, run directory and command line."""
  method: str
  seed: int
  workdir: str
  argv: tuple[str, ...]  # the arguments of ``python -m mmjax.main``
  num_epochs: int
  variant: MethodVariant | None = None  # the method with its options; ``method`` alone if None

  @property
  def label(self) -> str:
    return f'{self.variant.label if self.variant else self.method} seed {self.seed}'

  @property
  def log_path(self) -> str:
    """``DIR/logs/<variant>_seed_<s>.log`` (the run directory is ``DIR/<variant>/seed_<s>``)."""
    directory = self.variant.directory if self.variant else self.method
    return os.path.join(os.path.dirname(os.path.dirname(self.workdir)), LOG_DIR,
                        f'{directory}_seed_{self.seed}.log')


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What became of one run: ``'skipped'`` (finished before), ``'finished'`` or ``'failed'``."""
  spec: RunSpec
  status: str
  seconds: float = 0.0
  message: str = ''


def parse_list(flag: str, text: str, kind: type) -> list:
  """A comma-separated list of distinct values of ``kind`` (``int`` ones non-negative)."""
  items = [s.strip() for s in text.split(',') if s.strip()]
  if not items:
    raise UserError(f'{flag} is empty; give a comma-separated list, e.g. {flag} '
                    f'{"0,1,2" if kind is int else "vanilla,ogm_ge"}.')
  values = []
  for item in items:
    if kind is int:
      try:
        value = int(item)
      except ValueError:
        raise UserError(f'{flag}: {item!r} is not an integer seed; give e.g. {flag} 0,1,2.') from None
      if value < 0:
        raise UserError(f'{flag}: seed {value} is negative; seeds are integers >= 0.')
    else:
      value = item
    if value in values:
      raise UserError(f'{flag}: {item!r} is given twice.')
    values.append(value)
  return values


class _Parser(argparse.ArgumentParser):
  """An argument parser whose mistakes are :class:`UserError` (one line, exit code 2)."""

  def error(self, message):
    raise UserError(f'{message}. {USAGE}')


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """The compare flags, and the ``--config.KEY=VALUE`` overrides for every run."""
  parser = _Parser(prog='mmjax compare', add_help=False, allow_abbrev=False)
  for flag in ('--config', '--methods', '--seeds', '--workdir'):
    parser.add_argument(flag, required=True)
  parser.add_argument('--processes', default='1')
  parser.add_argument('--devices', default='')
  args, rest = parser.parse_known_args(list(argv))
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    raise UserError(f'unexpected argument {unknown[0]!r}. {USAGE}')
  if not args.workdir.strip():
    raise UserError(f'--workdir is empty. {USAGE}')
  try:
    args.processes = int(args.processes)
  except ValueError:
    raise UserError(f'--processes {args.processes!r} is not an integer; give N >= 1.') from None
  if args.processes < 1:
    raise UserError(f'--processes {args.processes} must be at least 1.')
  texts = parse_list('--methods', args.methods, str)
  args.methods, seen = [], {}
  for text in texts:
    variant = parse_method(text)
    if variant.directory in seen:
      raise UserError(f'--methods: {text!r} is the same method and options as '
                      f'{seen[variant.directory]!r}; give each once.')
    seen[variant.directory] = text
    args.methods.append(variant)
  args.seeds = parse_list('--seeds', args.seeds, int)
  args.devices = parse_list('--devices', args.devices, str) if args.devices.strip() else []
  return args, rest


def _with_arguments(config_flag: str, variant: MethodVariant, seed: int) -> str:
  """``configs/NAME.py:ARGS`` with ``method=M[,KEY=VALUE...],seed=S`` appended."""
  path, sep, arg = config_flag.partition(':')
  given = {item.partition('=')[0].strip() for item in arg.split(',') if item.strip()}
  for key in ('method', 'seed'):
    if key in given:
      raise UserError(f'--config {config_flag!r} sets {key}=...; mmjax compare sets it per run '
                      f'from --{key}s.')
  for key, _ in variant.options:
    if key in given:
      raise UserError(f'--config {config_flag!r} and --methods {variant.label!r} both set {key}; '
                      f'set it in one place.')
  options = ''.join(f',{k}={v}' for k, v in variant.options)
  return f'{path}:{arg + "," if sep and arg else ""}method={variant.name}{options},seed={seed}'


def _check_options(variant: MethodVariant) -> None:
  """The method's own check of option names: every key must be one of its scalar options."""
  valid = methods.scalar_options(variant.name)
  for key, _ in variant.options:
    if key not in valid:
      raise UserError(f'--methods {variant.label!r}: method.{key} is not an option of method '
                      f'{variant.name!r}; its options are {sorted(valid)}.')


def plan(args: argparse.Namespace, overrides: Sequence[str]) -> list[RunSpec]:
  """The runs, each one's config loaded and checked (:func:`mmjax.config_lib.validate`)."""
  specs = []
  for variant in args.methods:
    for seed in args.seeds:
      workdir = os.path.join(args.workdir, variant.directory, f'seed_{seed}')
      argv = ('--config', _with_arguments(args.config, variant, seed), '--workdir', workdir,
              *overrides)
      try:
        config = run_main.parse_flags(argv).config
        config_lib.validate(config)
      except (UserError, ValueError) as e:
        if variant.name not in methods.METHODS:  # the config file has run: its methods are registered
          raise UserError(f'--methods: {variant.name!r} is not a method; valid methods are '
                          f'{sorted(methods.METHODS)}.') from e
        _check_options(variant)
        raise UserError(f'{variant.label} seed {seed}: {e}') from e
      _check_options(variant)
      specs.append(RunSpec(variant.name, seed, workdir, argv, config.num_epochs, variant))
  return specs


def is_finished(workdir: str, num_epochs: int | None = None) -> bool:
  """Whether the run in ``workdir`` has trained all its epochs (its ``summary.json``), and, when
  ``num_epochs`` is given, that many (a run asked for more epochs goes on; the run itself
  decides whether it may)."""
  summary = metrics.read_summary(workdir) if os.path.isdir(workdir) else None
  if not (summary and summary.get('finished')):
    return False
  return num_epochs is None or summary.get('num_epochs') == num_epochs


def _last_line(path: str) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


def execute(spec: RunSpec, devices: queue.Queue | None) -> Outcome:
  """Runs one ``(method, seed)`` in a subprocess (or skips it when finished)."""
  if is_finished(spec.workdir, spec.num_epochs):
    return Outcome(spec, 'skipped')
  env = dict(os.environ)
  device = devices.get() if devices is not None else None
  if device is not None:
    env['CUDA_VISIBLE_DEVICES'] = device
  start = time.monotonic()
  try:
    with open(spec.log_path, 'w', encoding='utf-8') as log:
      code = subprocess.call([sys.executable, '-m', 'mmjax.main', *spec.argv], env=env,
                             stdout=log, stderr=subprocess.STDOUT)
  finally:
    if device is not None:
      devices.put(device)
  seconds = time.monotonic() - start
  if code != 0:
    return Outcome(spec, 'failed', seconds, f'exit code {code}: {_last_line(spec.log_path)}')
  return Outcome(spec, 'finished', seconds)


def progress_line(outcome: Outcome, done: int, total: int) -> str:
  """``compare [i/n] METHOD seed S: ...``, one line per run."""
  head = f'compare [{done}/{total}] {outcome.spec.label}'
  if outcome.status == 'skipped':
    return f'{head}: skipped (finished before) in {outcome.spec.workdir}'
  if outcome.status == 'failed':
    return f'{head}: FAILED after {outcome.seconds:.1f}s, {outcome.message} (log {outcome.spec.log_path})'
  summary = metrics.read_summary(outcome.spec.workdir) or {}
  at_best = summary.get('test_at_best', {})
  accuracy = ', '.join(f'{h} {at_best[h]:.4f}' for h in summary.get('heads', []) if h in at_best)
  return f'{head}: finished in {outcome.seconds:.1f}s; test accuracy at best val: {accuracy}'


def run_all(specs: Sequence[RunSpec], processes: int, devices: Sequence[str] = ()
            ) -> list[Outcome]:
  """Runs ``specs``, up to ``processes`` at once, printing a progress line as each ends."""
  device_queue = None
  if devices:
    device_queue = queue.Queue()
    for i in range(max(processes, len(devices))):
      device_queue.put(devices[i % len(devices)])
  lock = threading.Lock()
  outcomes: list[Outcome] = []

  def one(spec: RunSpec) -> Outcome:
    outcome = execute(spec, device_queue)
    with lock:
      outcomes.append(outcome)
      print(progress_line(outcome, len(outcomes), len(specs)), file=sys.stderr, flush=True)
    return outcome

  with concurrent.futures.ThreadPoolExecutor(max_workers=processes) as pool:
    list(pool.map(one, specs))
  return outcomes


LITERATURE_COLUMN = 'literature test fused'


def with_literature(table: report.ComparisonTable, dataset: str) -> tuple[str, str]:
  """The table as Markdown and CSV with the literature's fused test accuracy for each row's
  method on ``dataset`` (:func:`mmjax.literature.lookup`; ``—`` where none), and its sources
  (or why there is none) under the Markdown table."""
  entries = [literature.lookup(dataset, g['method']) for g in table.groups]
  lines = table.to_markdown().rstrip('\n').split('\n')
  rows = len(table.groups)
  lines[0] += f' {LITERATURE_COLUMN} |'
  lines[1] += '---|'
  for i, entry in enumerate(entries):
    lines[2 + i] += f' {entry.accuracy:.4f} ({entry.short}) |' if entry else ' — |'
  sources = sorted({e.source for e in entries if e})
  if sources:
    notes = [f'Literature: {source}.' for source in sources]
  else:
    notes = [f'Literature: — for {dataset}: '
             f'{literature.NOT_REPORTED.get(dataset, "no number in mmjax.literature.")}']
  lines = lines[:2 + rows] + [''] + notes + lines[2 + rows:]
  markdown = '\n'.join(lines) + '\n'
  reader = list(csv.DictReader(io.StringIO(table.to_csv())))
  columns = [*(reader[0].keys() if reader else []), 'literature/accuracy', 'literature/source']
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  for row, entry in zip(reader, entries):
    writer.writerow({**row, 'literature/accuracy': entry.accuracy if entry else '',
                     'literature/source': entry.source if entry else ''})
  return markdown, buffer.getvalue()


def compare(argv: Sequence[str]) -> int:
  """Runs ``mmjax compare`` with ``argv``; returns the exit code."""
  try:
    args, overrides = parse_args(argv)
    specs = plan(args, overrides)
  except UserError as e:
    run_main.print_error(e)
    return 2
  os.makedirs(os.path.join(args.workdir, LOG_DIR), exist_ok=True)
  outcomes = run_all(specs, args.processes, args.devices)
  failed = [o for o in outcomes if o.status == 'failed']
  done = [s.workdir for s in specs if is_finished(s.workdir, s.num_epochs)]
  if done:
    runs = report.load_runs(done)
    result = report.write_report(runs, os.path.join(args.workdir, REPORT_DIR))
    markdown, csv_text = with_literature(result['table'], runs[0].config['data']['name'])
    for name, text in (('comparison.md', markdown), ('comparison.csv', csv_text)):
      with open(os.path.join(args.workdir, name), 'w', encoding='utf-8') as f:
        f.write(text)
    print(markdown)
    print(f'compare: {len(done)} of {len(specs)} runs in the table: '
          f'{os.path.join(args.workdir, "comparison.md")}; plots and report.md in '
          f'{os.path.join(args.workdir, REPORT_DIR)}', file=sys.stderr)
  if failed:
    print(f'compare: {len(failed)} run(s) failed: '
          f'{", ".join(o.spec.label for o in failed)}; rerun the same command to resume them.',
          file=sys.stderr)
    return 1
  return 0


__all__ = ['LITERATURE_COLUMN', 'MethodVariant', 'Outcome', 'RunSpec', 'USAGE', 'compare', 'execute',
           'is_finished', 'parse_args', 'parse_list', 'parse_method', 'plan', 'progress_line',
           'run_all', 'with_literature']
