"""``mmjax compare``: every method x seed as an ordinary run directory, then one comparison.

    mmjax compare --config configs/NAME.py[:ARGS] --methods vanilla,gblend,greedy,ogm_ge \\
        --seeds 0,1,2 --workdir DIR [--processes N] [--devices 0,1,...] [--config.KEY=VALUE ...]

Run ``(method, seed)`` is ``python -m mmjax.main --config configs/NAME.py:ARGS,method=M,seed=S
--workdir DIR/M/seed_S [--config.KEY=VALUE ...]`` in a subprocess of its own, so it is the
same resumable run directory a single ``mmjax train`` makes: a run whose ``summary.json``
says ``finished`` is skipped, an unfinished one resumes from its latest checkpoint. Up to
``--processes`` runs go at once (default 1); with ``--devices``, each running process sees one
of those accelerators (``CUDA_VISIBLE_DEVICES``), one process per device at a time unless
``--processes`` is larger. Each child's output goes to ``DIR/logs/M_seed_S.log``; one progress
line per run goes to stderr.

When every run is done, :func:`mmjax.report.write_report` writes the comparison table (per
method, best-val and test-at-best-val accuracy per head, mean +- sample std over the seeds)
as ``DIR/comparison.md`` and ``DIR/comparison.csv``, and the full report (per-run table,
plots, ``report.md``) into ``DIR/report/``.

Every argument and every run's config are checked before anything starts or is written: a
mistake is one ``mmjax: error:`` line and exit code 2. A run that fails is named with the last
line of its log; the others still run, and the command exits with 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Sequence

from mmjax import config_lib, methods, metrics
from mmjax import main as run_main
from mmjax import report
from mmjax.errors import UserError

USAGE = ('usage: mmjax compare --config configs/NAME.py[:ARGS] --methods M1,M2,... '
         '--seeds S1,S2,... --workdir DIR [--processes N] [--devices D1,D2,...] '
         '[--config.KEY=VALUE ...]')
LOG_DIR = 'logs'
REPORT_DIR = 'report'


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the comparison: its method, seed, run directory and command line."""
  method: str
  seed: int
  workdir: str
  argv: tuple[str, ...]  # the arguments of ``python -m mmjax.main``
  num_epochs: int

  @property
  def label(self) -> str:
    return f'{self.method} seed {self.seed}'

  @property
  def log_path(self) -> str:
    """``DIR/logs/<method>_seed_<s>.log`` (the run directory is ``DIR/<method>/seed_<s>``)."""
    return os.path.join(os.path.dirname(os.path.dirname(self.workdir)), LOG_DIR,
                        f'{self.method}_seed_{self.seed}.log')


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
  args.methods = parse_list('--methods', args.methods, str)
  args.seeds = parse_list('--seeds', args.seeds, int)
  args.devices = parse_list('--devices', args.devices, str) if args.devices.strip() else []
  return args, rest


def _with_arguments(config_flag: str, method: str, seed: int) -> str:
  """``configs/NAME.py:ARGS`` with ``method=M,seed=S`` appended."""
  path, sep, arg = config_flag.partition(':')
  given = {item.partition('=')[0].strip() for item in arg.split(',') if item.strip()}
  for key in ('method', 'seed'):
    if key in given:
      raise UserError(f'--config {config_flag!r} sets {key}=...; mmjax compare sets it per run '
                      f'from --{key}s.')
  return f'{path}:{arg + "," if sep and arg else ""}method={method},seed={seed}'


def plan(args: argparse.Namespace, overrides: Sequence[str]) -> list[RunSpec]:
  """The runs, each one's config loaded and checked (:func:`mmjax.config_lib.validate`)."""
  specs = []
  for method in args.methods:
    for seed in args.seeds:
      workdir = os.path.join(args.workdir, method, f'seed_{seed}')
      argv = ('--config', _with_arguments(args.config, method, seed), '--workdir', workdir,
              *overrides)
      try:
        config = run_main.parse_flags(argv).config
        config_lib.validate(config)
      except (UserError, ValueError) as e:
        if method not in methods.METHODS:  # the config file has run: its methods are registered
          raise UserError(f'--methods: {method!r} is not a method; valid methods are '
                          f'{sorted(methods.METHODS)}.') from e
        raise UserError(f'{method} seed {seed}: {e}') from e
      specs.append(RunSpec(method, seed, workdir, argv, config.num_epochs))
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
    result = report.write_report(report.load_runs(done), os.path.join(args.workdir, REPORT_DIR))
    table = result['table']
    for name, text in (('comparison.md', table.to_markdown()), ('comparison.csv', table.to_csv())):
      with open(os.path.join(args.workdir, name), 'w', encoding='utf-8') as f:
        f.write(text)
    print(table.to_markdown())
    print(f'compare: {len(done)} of {len(specs)} runs in the table: '
          f'{os.path.join(args.workdir, "comparison.md")}; plots and report.md in '
          f'{os.path.join(args.workdir, REPORT_DIR)}', file=sys.stderr)
  if failed:
    print(f'compare: {len(failed)} run(s) failed: '
          f'{", ".join(o.spec.label for o in failed)}; rerun the same command to resume them.',
          file=sys.stderr)
    return 1
  return 0


__all__ = ['Outcome', 'RunSpec', 'USAGE', 'compare', 'execute', 'is_finished', 'parse_args',
           'parse_list', 'plan', 'progress_line', 'run_all']
