"""The bad-input battery: every mistake gets one line on stderr, exit code 2, and no change.

    python -m benchmarks.bad_input_battery                 # every case in-process, 6 as subprocesses
    python -m benchmarks.bad_input_battery --subprocess    # every CLI case also as a subprocess
    python -m benchmarks.bad_input_battery -k workdir      # the cases whose name holds 'workdir'
    python -m benchmarks.bad_input_battery --only-subprocess   # the CLI alone (any mmjax version)

Each case runs ``python -m mmjax.main`` (in-process through :func:`mmjax.main.main`, whose stderr
is captured at the file-descriptor level, or as a real subprocess) against a prepared run
directory: absent, a finished run, a file, a garbled ``config.json``, ... The case passes when the
exit code is 2, stderr is exactly one line starting ``mmjax: error:`` and holding the expected
words, and the folder around the workdir is byte-for-byte unchanged: the same paths, kinds, sizes,
modification times and SHA-256 of every file, the folder itself included. The in-process-only
cases register a data set with a defect (NaN inputs, a bad label, an empty split, ...) with
``mmjax.data.register``, as a user adds their own data set.

``tests/test_bad_input.py`` runs a fast subset of these cases.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A tiny synthetic run (one epoch of 8 steps): every case starts from these flags.
BASE = ('--config', 'configs/synthetic.py:method=vanilla,smoke', '--config.data.num_train=256',
        '--config.data.num_val=64', '--config.data.num_test=64', '--config.batch_size=32',
        '--config.eval_batch_size=64', '--config.num_epochs=1', '--config.progress_bar=False')

#: One modality ``a`` in the synthetic data set (its per-modality options with one value).
ONE_VIEW = ("--config.data.modalities=('a',)", '--config.data.dim=(16,)',
            '--config.data.signal=(1.0,)', '--config.data.clusters_per_class=(1,)',
            '--config.data.shortcut=(0.0,)', '--config.data.noise_dims=(0,)')

CONFIG_FILES = {
    'syntax_error.py': 'def get_config(arg=None)\n  return None\n',
    'returns_none.py': 'def get_config(arg=None):\n  return None\n',
    'no_get_config.py': 'CONFIG = {}\n',
    'raises.py': 'def get_config(arg=None):\n  raise RuntimeError("my config is unfinished")\n',
    'not_python.yaml': 'seed: 0\nmodel:\n  name: mmtm\n',
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  Attributes:
    name: what is wrong.
    args: the command line after ``BASE`` (or instead of it when ``base`` is False);
      ``{workdir}`` and ``{files}`` (the folder of :data:`CONFIG_FILES`) are filled in.
    expect: words the error line must hold (case-sensitive).
    workdir: the state of the run directory before the case: ``absent``, ``run`` (a finished
      run of ``BASE``), ``file``, ``under_file``, ``garbled``, ``json_list``, ``config_dir``.
    base: whether ``BASE`` comes first.
    in_process_only: needs a data set registered in this process.
  """
  name: str
  args: tuple[str, ...]
  expect: str
  workdir: str = 'absent'
  base: bool = True
  in_process_only: bool = False


def _c(name, args, expect, **kwargs):
  return Case(name, tuple(args), expect, **kwargs)


W = ('--workdir', '{workdir}')

CASES: tuple[Case, ...] = (
    # ----- flags and the config file
    _c('no arguments', [], '--config is required', base=False),
    _c('no --workdir', ['--config', 'configs/synthetic.py'], '--workdir is required', base=False),
    _c('no --config', W, '--config is required', base=False),
    _c('empty --workdir', ['--workdir='], '--workdir is empty'),
    _c('--workdir without a value', ['--workdir'], 'Missing value for flag --workdir'),
    _c('config file missing', ['--config', 'configs/nope.py', *W],
       "'configs/nope.py': the config file cannot be read ([Errno 2] No such file", base=False),
    _c('config file is a folder', ['--config', 'configs', *W], 'Is a directory', base=False),
    _c('config file syntax error', ['--config', '{files}/syntax_error.py', *W],
       'has a syntax error on line 1', base=False),
    _c('config file not Python', ['--config', '{files}/not_python.yaml', *W], 'syntax error',
       base=False),
    _c('get_config returns None', ['--config', '{files}/returns_none.py', *W],
       'get_config() returned NoneType', base=False),
    _c('no get_config', ['--config', '{files}/no_get_config.py', *W], 'get_config', base=False),
    _c('get_config raises', ['--config', '{files}/raises.py', *W],
       'RuntimeError: my config is unfinished', base=False),
    _c('unknown config argument', ['--config', 'configs/synthetic.py:bogus=1', *W],
       "config argument 'bogus' is not known", base=False),
    _c('unknown method argument', ['--config', 'configs/synthetic.py:method=nope', *W],
       "method.name = 'nope' is not a method", base=False),
    _c('flag argument with a value', ['--config', 'configs/synthetic.py:smoke=yes', *W],
       "smoke='yes': expected true or false", base=False),
    _c('integer argument not a number', ['--config', 'configs/synthetic.py:seed=abc', *W],
       "seed='abc': expected a int", base=False),
    _c('method option for another method', ['--config', 'configs/synthetic.py:modality=a', *W],
       "does not apply to method 'vanilla'", base=False),
    _c('unknown key', ['--config.foo=1', *W], "config has no key 'foo'"),
    _c('unknown nested key', ['--config.optimizer.momentun=0.5', *W],
       "config.optimizer has no key 'momentun'"),
    _c('weights of a method without weights', ['--config.method.weights.xyz=1', *W],
       "config.method has no key 'weights'"),
    _c('weight of an unknown head', ['--config', 'configs/synthetic.py:method=fixed',
                                     '--config.method.weights.xyz=1', *W],
       "config.method.weights has no key 'xyz'"),
    _c('key below a value', ['--config.batch_size.x=1', *W], 'config.batch_size is a value'),
    _c('integer key given text', ['--config.batch_size=abc', *W],
       "--config.batch_size=abc: invalid literal for int()"),
    _c('integer key given a float', ['--config.num_epochs=1.5', *W], '--config.num_epochs=1.5'),
    _c('boolean key given text', ['--config.progress_bar=maybe', *W], 'Non-boolean argument'),
    _c('section given a number', ['--config.method=3', *W], 'config.method'),
    _c('unbalanced tuple', ['--config.data.signal=(1,2', *W], 'Error while parsing string'),
    _c('override before --config', ['--config.num_epochs=2', '--config', 'configs/synthetic.py',
                                    *W], 'before a value for --config', base=False),
    _c('unknown flag', ['--epochs=3', *W], "Unknown command line flag 'epochs'"),
    _c('positional argument', [*W, 'train'], "unexpected arguments ['train']"),
    # ----- values of the run
    _c('batch_size 0', ['--config.batch_size=0', *W], 'batch_size = 0'),
    _c('batch_size negative', ['--config.batch_size=-8', *W], 'batch_size = -8'),
    _c('batch_size above the train split', ['--config.batch_size=512', *W],
       'batch_size=512 exceeds the 256 examples'),
    _c('eval_batch_size 0', ['--config.eval_batch_size=0', *W], 'eval_batch_size = 0'),
    _c('num_epochs 0', ['--config.num_epochs=0', *W], 'num_epochs = 0'),
    _c('log_every_steps 0', ['--config.log_every_steps=0', *W], 'log_every_steps = 0'),
    _c('checkpoint_keep 0', ['--config.checkpoint_keep=0', *W], 'checkpoint_keep = 0'),
    _c('checkpoint_every_steps negative', ['--config.checkpoint_every_steps=-1', *W],
       'checkpoint_every_steps = -1'),
    _c('seed negative', ['--config.seed=-1', *W], 'seed = -1'),
    _c('distributed without a cluster', ['--config.distributed.enabled=True', *W],
       'jax.distributed.initialize failed'),
    _c('distributed in its old form', ['--config.distributed=True', *W],
       'config.distributed is a section: set distributed.enabled = True'),
    _c('distributed address without a port',
       ['--config.distributed.enabled=True', '--config.distributed.coordinator_address=node1', *W],
       "distributed.coordinator_address = 'node1' is not valid"),
    _c('unknown data set', ['--config.data.name=imagenet', *W], "name='imagenet' is not a data set"),
    _c('data option of another data set', ['--config.data.name=ucimf', *W],
       "for data set 'ucimf'"),
    _c('num_train 0', ['--config.data.num_train=0', *W], 'num_train'),
    _c('per-modality option of the wrong length', ['--config.data.signal=(1.0, 2.0, 3.0)', *W],
       'one value or one per modality'),
    _c('per-modality option not a number', ['--config.data.signal=abc', *W], 'signal'),
    _c('modality named fused', ["--config.data.modalities=('a', 'fused')", *W], "'fused'"),
    _c('modality twice', ["--config.data.modalities=('a', 'a')", *W], 'must not repeat'),
    _c('dim 0', ['--config.data.dim=(0, 16)', *W], 'dim'),
    _c('unknown model', ['--config.model.name=transformer', *W],
       "model.name = 'transformer' is not a model"),
    _c('unknown encoder', ['--config.model.encoders.a.name=vit', *W], 'vit'),
    _c('unknown fusion', ['--config.model.fusion=product', *W], 'product'),
    _c('unknown optimizer', ['--config.optimizer.name=rmsprop', *W],
       "optimizer.name = 'rmsprop'"),
    _c('learning rate 0', ['--config.optimizer.learning_rate=0.0', *W],
       'optimizer.learning_rate = 0.0 must be positive'),
    _c('learning rate negative', ['--config.optimizer.learning_rate=-0.1', *W],
       'optimizer.learning_rate = -0.1 must be positive'),
    _c('unknown schedule', ['--config.optimizer.schedule=linear', *W],
       "optimizer.schedule = 'linear'"),
    _c('weight decay negative', ['--config.optimizer.weight_decay=-0.1', *W],
       'optimizer.weight_decay = -0.1'),
    _c('step schedule without steps', ['--config.optimizer.schedule=step', *W],
       'optimizer.step_epochs = ()'),
    _c('warm-up as long as the run', ['--config.optimizer.schedule=cosine',
                                      '--config.optimizer.warmup_epochs=1', *W],
       'optimizer.warmup_epochs = 1 must be below num_epochs = 1'),
    _c('unknown method', ['--config.method.name=nope', *W], "method.name = 'nope'"),
    _c('greedy on one modality', ['--config', 'configs/synthetic.py:method=greedy,smoke',
                                  *ONE_VIEW, *W], 'two or more modalities', base=False),
    _c('gblend held-out fraction above 1', ['--config', 'configs/synthetic.py:method=gblend,smoke',
                                            '--config.method.heldout_fraction=1.5', *W],
       'heldout_fraction', base=False),
    _c('gblend unknown estimator', ['--config', 'configs/synthetic.py:method=gblend,smoke',
                                    '--config.method.estimator=bogus', *W], 'estimator',
       base=False),
    _c('fixed negative weight', ['--config', 'configs/synthetic.py:method=fixed,smoke',
                                 '--config.method.weights.a=-1.0', *W], 'non-negative', base=False),
    _c('fixed all weights zero', ['--config', 'configs/synthetic.py:method=fixed,smoke',
                                  '--config.method.weights.a=0.0', '--config.method.weights.b=0.0',
                                  '--config.method.weights.fused=0.0', *W],
       'at least one head needs a positive weight', base=False),
    _c('unimodal on an unknown modality', ['--config', 'configs/synthetic.py:method=unimodal,'
                                           'modality=c,smoke', *W], "'c'", base=False),
    _c('greedy window 0', ['--config', 'configs/synthetic.py:method=greedy,smoke',
                           '--config.method.window=0', *W], 'method.window = 0', base=False),
    _c('greedy starting epoch 1', ['--config', 'configs/synthetic.py:method=greedy,smoke',
                                   '--config.method.starting_epoch=1', *W],
       'method.starting_epoch = 1', base=False),
    # ----- the workdir
    _c('workdir is a file', W, 'is a file', workdir='file'),
    _c('workdir below a file', ['--workdir', '{workdir}/run'], 'is a file', workdir='file'),
    _c('different learning rate on a run', ['--config.optimizer.learning_rate=0.5', *W],
       'optimizer.learning_rate: 0.001 -> 0.5', workdir='run'),
    _c('different seed on a run', ['--config.seed=1', *W], 'seed: 0 -> 1', workdir='run'),
    _c('different method on a run', ['--config', 'configs/synthetic.py:method=uniform,smoke',
                                     *BASE[2:], *W], "method.name: 'vanilla' -> 'uniform'",
       workdir='run', base=False),
    _c('different batch size on a run', ['--config.batch_size=16', *W], 'batch_size: 32 -> 16',
       workdir='run'),
    _c('different data option on a run', ['--config.data.num_val=32', *W],
       'data.num_val: 64 -> 32', workdir='run'),
    _c('different schedule on a run', ['--config.optimizer.schedule=cosine', *W],
       "optimizer.schedule: 'constant' -> 'cosine'", workdir='run'),
    _c('bad value on a run', ['--config.batch_size=0', *W], 'batch_size = 0', workdir='run'),
    _c('garbled config.json', W, 'config.json cannot be read', workdir='garbled'),
    _c('config.json holds a list', W, 'config.json holds a JSON list', workdir='json_list'),
    _c('config.json is a folder', W, 'config.json cannot be read', workdir='config_dir'),
    # ----- data sets with a defect (registered in this process)
    _c('NaN train inputs', ['--config.data.name=defect_nan_train', *W],
       "The train split has NaN or infinite 'b' inputs", in_process_only=True),
    _c('infinite val inputs', ['--config.data.name=defect_inf_val', *W],
       "The val split has NaN or infinite 'a' inputs", in_process_only=True),
    _c('label = num_classes', ['--config.data.name=defect_label_high', *W],
       'The test split has 1 labels outside [0, 4)', in_process_only=True),
    _c('negative label', ['--config.data.name=defect_label_negative', *W],
       'The train split has 1 labels outside [0, 4), the first -1', in_process_only=True),
    _c('empty val split', ['--config.data.name=defect_empty_val', *W],
       'The val split has no examples', in_process_only=True),
    _c('modality rows unlike labels', ['--config.data.name=defect_rows', *W],
       "inputs['b'] has shape (255, 16)", in_process_only=True),
    _c('a modality only in train', ['--config.data.name=defect_missing_view', *W],
       "The val split has modalities ('a',)", in_process_only=True),
)

#: The cases run as real subprocesses by default (exit code and one-line stderr of the CLI).
SUBPROCESS_SAMPLE = ('no arguments', 'unknown nested key', 'config file syntax error',
                     'batch_size above the train split', 'different learning rate on a run',
                     'garbled config.json')


# ----- data sets with a defect ----------------------------------------------------------------


def _defect_builder(name: str, corrupt: Callable[[dict], None]):
  """A data-set builder: the synthetic data set, then ``corrupt`` on its splits' plain arrays."""
  from mmjax import data  # pylint: disable=import-outside-toplevel
  from mmjax.data import synthetic  # pylint: disable=import-outside-toplevel

  def build(seed, **options):
    clean = synthetic.build(seed, **options)
    arrays = {s: {'inputs': {m: np.array(x) for m, x in split.inputs.items()},
                  'label': np.array(split.label)} for s, split in clean.splits.items()}
    corrupt(arrays)
    splits = {s: data.Split(a['inputs'], a['label']) for s, a in arrays.items()}
    return data.MultiModalDataset(name, clean.modalities, clean.num_classes, splits)

  return build


def _set(path: tuple, value) -> Callable[[dict], None]:
  def corrupt(arrays):
    split, what, index = path
    target = arrays[split]['inputs'][what] if what != 'label' else arrays[split]['label']
    target[index] = value
  return corrupt


def _empty_val(arrays):
  arrays['val'] = {'inputs': {m: x[:0] for m, x in arrays['val']['inputs'].items()},
                   'label': arrays['val']['label'][:0]}


def _short_rows(arrays):
  arrays['train']['inputs']['b'] = arrays['train']['inputs']['b'][:-1]


def _missing_view(arrays):
  for split in ('val', 'test'):
    del arrays[split]['inputs']['b']


DEFECTS = {
    'defect_nan_train': _set(('train', 'b', (7, 3)), np.nan),
    'defect_inf_val': _set(('val', 'a', (0, 0)), np.inf),
    'defect_label_high': _set(('test', 'label', 5), 4),
    'defect_label_negative': _set(('train', 'label', 9), -1),
    'defect_empty_val': _empty_val,
    'defect_rows': _short_rows,
    'defect_missing_view': _missing_view,
}


def register_defects() -> None:
  """Registers the data sets of :data:`DEFECTS` with ``mmjax.data.register`` (again: the same
  builders replace themselves)."""
  from mmjax import data  # pylint: disable=import-outside-toplevel
  from mmjax.data import synthetic  # pylint: disable=import-outside-toplevel
  for name, corrupt in DEFECTS.items():
    data.register(name, options=synthetic.OPTIONS)(_defect_builder(name, corrupt))


# ----- run directories ------------------------------------------------------------------------


def snapshot(folder: str) -> list[tuple]:
  """Every path under ``folder`` (itself included): kind, size, mtime and SHA-256 of files."""
  entries = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in ['.', *sorted(filenames)] if dirpath == folder else sorted(filenames):
      path = os.path.join(dirpath, name)
      entries.append(_entry(folder, path))
    for name in dirnames:
      entries.append(_entry(folder, os.path.join(dirpath, name)))
  return sorted(entries)


def _entry(folder: str, path: str) -> tuple:
  st = os.lstat(path)
  digest = ''
  if os.path.isfile(path) and not os.path.islink(path):
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
  return (os.path.relpath(path, folder), st.st_mode, st.st_size, st.st_mtime_ns, digest)


def _finished_run(cache: str, subprocess_mode: bool) -> str:
  """A finished run of ``BASE`` under ``cache`` (made once, by the CLI of the mode)."""
  workdir = os.path.join(cache, 'finished_run')
  if not os.path.isdir(workdir):
    code = _run_cli([*BASE, '--workdir', workdir], subprocess_mode)[0]
    if code != 0:
      raise RuntimeError(f'the reference run failed with exit code {code}')
  return workdir


def _run_cli(argv: list[str], subprocess_mode: bool) -> tuple[int, str]:
  """``python -m mmjax.main argv`` from the repository root: ``(exit code, stderr)``."""
  if subprocess_mode:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'),
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    out = subprocess.run([sys.executable, '-m', 'mmjax.main', *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    return out.returncode, out.stderr
  from mmjax import main  # pylint: disable=import-outside-toplevel
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    register_defects()
    with _captured_stderr() as stderr_text:
      code = main.main(argv)
  finally:
    os.chdir(cwd)
  return code, stderr_text()


def prepare(case: Case, scratch: str, cache: str, subprocess_mode: bool = False) -> str:
  """Lays out the case's run directory in ``scratch``; returns the ``--workdir`` path."""
  workdir = os.path.join(scratch, 'run')
  if case.workdir == 'absent':
    return workdir
  if case.workdir == 'file':
    with open(workdir, 'w', encoding='utf-8') as f:
      f.write('a file where the run directory should be\n')
    return workdir
  shutil.copytree(_finished_run(cache, subprocess_mode), workdir, symlinks=True)
  config_path = os.path.join(workdir, 'config.json')
  if case.workdir == 'garbled':
    with open(config_path, 'r+b') as f:
      f.truncate(os.path.getsize(config_path) // 2)
  elif case.workdir == 'json_list':
    with open(config_path, 'w', encoding='utf-8') as f:
      f.write('[1, 2, 3]\n')
  elif case.workdir == 'config_dir':
    os.remove(config_path)
    os.mkdir(config_path)
  return workdir


def _fill(args: tuple[str, ...], workdir: str, files: str) -> list[str]:
  return [a.replace('{workdir}', workdir).replace('{files}', files) for a in args]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
  """Captures file descriptor 2 (Python, absl, C++) and ``sys.stderr`` into a temporary file."""
  sys.stderr.flush()
  saved, saved_stream = os.dup(2), sys.stderr
  with tempfile.TemporaryFile(mode='w+b') as capture:
    os.dup2(capture.fileno(), 2)
    # Python's sys.stderr may be another stream (pytest's capture): point it at descriptor 2.
    sys.stderr = io.TextIOWrapper(io.FileIO(2, 'w', closefd=False), write_through=True)
    text = []
    try:
      yield lambda: ''.join(text)
    finally:
      sys.stderr.flush()
      sys.stderr = saved_stream
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text.append(capture.read().decode('utf-8', 'replace'))


@dataclasses.dataclass
class Result:
  case: Case
  mode: str
  code: int | None
  stderr: str
  unchanged: bool
  seconds: float

  @property
  def problems(self) -> list[str]:
    lines = self.stderr.splitlines()
    out = []
    if self.code != 2:
      out.append(f'exit code {self.code}')
    if len(lines) != 1:
      out.append(f'{len(lines)} lines on stderr')
    elif not lines[0].startswith('mmjax: error: ') or self.case.expect not in lines[0]:
      out.append(f'message lacks {self.case.expect!r}')
    if not self.unchanged:
      out.append('the run directory changed')
    return out


def run_case(case: Case, scratch: str, cache: str, files: str, subprocess_mode: bool = False
             ) -> Result:
  """Runs one case in ``scratch`` (an empty folder); returns what happened."""
  workdir = prepare(case, scratch, cache, subprocess_mode)
  argv = _fill((BASE if case.base else ()) + case.args, workdir, files)
  before = snapshot(scratch)
  start = time.monotonic()
  code, stderr = _run_cli(argv, subprocess_mode)
  seconds = time.monotonic() - start
  return Result(case, 'subprocess' if subprocess_mode else 'in-process', code, stderr,
                snapshot(scratch) == before, seconds)


def write_config_files(folder: str) -> str:
  os.makedirs(folder, exist_ok=True)
  for name, text in CONFIG_FILES.items():
    with open(os.path.join(folder, name), 'w', encoding='utf-8') as f:
      f.write(text)
  return folder


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--subprocess', action='store_true',
                      help='also run every CLI case as a subprocess (slow: a JAX start each)')
  parser.add_argument('--only-subprocess', action='store_true',
                      help='run the CLI cases as subprocesses only (e.g. against an older mmjax)')
  parser.add_argument('-k', default='', help='only the cases whose name holds this text')
  args = parser.parse_args(argv)
  cases = [c for c in CASES if args.k in c.name
           and not (args.only_subprocess and c.in_process_only)]
  results = []
  with tempfile.TemporaryDirectory(prefix='mmjax-bad-input-') as tmp:
    files = write_config_files(os.path.join(tmp, 'config_files'))
    cache = os.path.join(tmp, 'cache')
    os.makedirs(cache)
    for i, case in enumerate(cases):
      modes = [] if args.only_subprocess else [False]
      if not case.in_process_only and (args.subprocess or args.only_subprocess
                                       or case.name in SUBPROCESS_SAMPLE):
        modes.append(True)
      for j, mode in enumerate(modes):
        scratch = os.path.join(tmp, f'case{i:03d}_{j}')
        os.makedirs(scratch)
        result = run_case(case, scratch, cache, files, subprocess_mode=mode)
        results.append(result)
        status = 'ok ' if not result.problems else 'BAD'
        line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''
        print(f'{status} [{result.mode:10s} {result.seconds:5.1f}s] {case.name}: '
              f"{'; '.join(result.problems) or line}")
  clean = sum(not r.problems for r in results)
  cases_ok = len({r.case.name for r in results} - {r.case.name for r in results if r.problems})
  print(f'\n{len(cases)} bad inputs, {len(results)} runs ({sum(r.mode == "subprocess" for r in results)} '
        f'as subprocesses): {clean} runs clean (one line, exit code 2, run directory unchanged); '
        f'{cases_ok} of {len(cases)} inputs clean in every mode.')
  return 0 if clean == len(results) else 1


if __name__ == '__main__':
  sys.exit(main())
