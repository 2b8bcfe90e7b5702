"""The machinery of ``mmjax prepare``: raw files -> ArrayRecord shards a Grain source reads.

A data set's **preparer** (registered with :func:`register_preparer`) says which examples the
raw files hold and how one is decoded; this module does the rest:

- **Listing.** ``preparer.list_examples(raw_dir, **options)`` gives :class:`Example` s, each with
  a unique ``key``, its ``split`` (``train``, ``val`` or ``test``), its integer ``label`` and the
  raw ``files`` it is decoded from. A wrong raw layout raises :class:`~mmjax.errors.UserError`.
- **Shards.** The examples of each split, in the order listed, are cut into shards of
  ``examples_per_shard``; shard ``k`` of ``Y`` of a split is
  ``OUT/<split>-<k:05d>-of-<Y:05d>.array_record``. A record holds the example's features (what
  ``preparer.decode(example, **options)`` returns, ``{feature key: numpy array}``), its ``label``
  and its ``key``, serialised as a msgpack map by ``flax.serialization.msgpack_serialize``
  (:func:`serialize_record`, :func:`parse_record`). The output does not depend on the number of
  worker processes: each shard holds its examples in the listed order.
- **Workers.** Shards are decoded and written in ``workers`` processes (``spawn``ed, so a
  parent that imported JAX is safe), or in this process with ``workers=0``; a tqdm bar counts the
  examples.
- **Resume.** A shard is written under a temporary name and renamed when complete; then its
  record, ``OUT/.progress/<shard>.json`` (labels, failures, feature shapes), is written
  atomically. A rerun of the same command skips every shard with a record. ``OUT/prepare.json``
  holds what the output is made from (data set, raw folder, options, shard size, a digest of the
  example list); a rerun that differs in any of these is refused with one line.
- **Failures.** An example whose ``decode`` raises is left out of its shard and listed, with its
  files and the error, in ``OUT/failures.txt`` and ``OUT/failures.json``; never silently dropped.
  A summary line on stderr gives the count.
- **Metadata.** When every shard is done, ``OUT/labels.npz`` (each split's labels in record
  order) and ``OUT/metadata.json`` (counts and shards per split, feature shapes and dtypes,
  options, mmjax version, and the preparer's ``metadata(**options)``: classes, modalities,
  preprocessing with its sources) are written, ``metadata.json`` last: its presence marks a
  finished output.

Reading: :func:`open_prepared` gives ``{split: PreparedSource}`` (a Grain
``ArrayRecordDataSource`` whose records are parsed), and :func:`prepared_dataset` builds the
:class:`~mmjax.data.MultiModalDataset` of a prepared folder with per-modality ``preprocess`` /
``augment`` functions (run in Grain workers), carving val out of train when the folder has none.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mmjax import faults
from mmjax.data.arrays import resolve_num_classes
from mmjax.data.dataset import SPLITS, MultiModalDataset
from mmjax.data.records import Augment, Preprocess, RecordSplit
from mmjax.errors import UserError

FORMAT_VERSION = 1
"""The version of the output layout, recorded in ``prepare.json`` and ``metadata.json``."""
STATE_FILE = 'prepare.json'
PROGRESS_DIR = '.progress'
METADATA_FILE = 'metadata.json'
LABELS_FILE = 'labels.npz'
FAILURES_TXT = 'failures.txt'
FAILURES_JSON = 'failures.json'
SHARD_SUFFIX = '.array_record'
ARRAY_RECORD_OPTIONS = 'group_size:1'
"""One record per chunk: the fastest random access (Grain's recommendation)."""
DEFAULT_EXAMPLES_PER_SHARD = 1024
RESERVED_KEYS = ('label', 'key')
"""Record keys the core writes itself; a preparer's features may not use them."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One example the raw files hold.

  Attributes:
    key: a unique id (e.g. the raw file's path relative to the raw folder, without suffix).
    split: ``'train'``, ``'val'`` or ``'test'``.
    label: the class index, ``0 <= label < number of classes``.
    files: the raw files this example is decoded from.
    extra: anything else ``decode`` needs (a time window, a view index, ...); JSON-able.
  """

  key: str
  split: str
  label: int
  files: tuple[str, ...]
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PreparerEntry:
  """A registered preparer.

  Attributes:
    name: the name ``mmjax prepare NAME`` takes.
    factory: a class or function whose call with no arguments gives an object with
      ``list_examples(raw_dir, **options)``, ``decode(example, **options)`` and
      ``metadata(**options)``. It must be picklable by reference (defined at a module's top
      level): worker processes receive it.
    options: the options (``--option KEY=VALUE``) and their defaults; a value given on the
      command line is parsed to its default's type.
  """

  name: str
  factory: Callable[[], Any]
  options: Mapping[str, Any]

  @property
  def description(self) -> str:
    """The first line of the factory's docstring."""
    return (self.factory.__doc__ or '').strip().split('\n', 1)[0]


_PREPARERS: dict[str, PreparerEntry] = {}


def register_preparer(name: str, *, options: Mapping[str, Any] | None = None
                      ) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
  """A decorator that registers a preparer class (or factory) as ``mmjax prepare NAME``.

  Args:
    name: the data set's name, a Python identifier.
    options: ``{option: default}``; defaults are bool, int, float, str or tuples of them.

  Returns:
    The decorator; it returns the class unchanged.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f'preparer name {name!r} must be a Python identifier.')
  options = dict(options or {})
  for key, default in options.items():
    if not isinstance(default, (bool, int, float, str, tuple)):
      raise ValueError(f'register_preparer({name!r}): option {key!r} has default {default!r}; '
                       'defaults are bool, int, float, str or tuples of them.')

  def decorator(factory: Callable[[], Any]) -> Callable[[], Any]:
    previous = _PREPARERS.get(name)
    if previous is not None and (previous.factory.__module__, previous.factory.__qualname__) != (
        factory.__module__, factory.__qualname__):
      raise ValueError(f'preparer {name!r} is already registered by '
                       f'{previous.factory.__module__}.{previous.factory.__qualname__}.')
    _PREPARERS[name] = PreparerEntry(name, factory, options)
    return factory

  return decorator


def registered_preparers() -> dict[str, PreparerEntry]:
  """The registered preparers, ``{name: PreparerEntry}`` (a copy)."""
  return dict(_PREPARERS)


def get_preparer(name: str) -> PreparerEntry:
  """The preparer registered as ``name``; a :class:`UserError` listing the names otherwise."""
  if name not in _PREPARERS:
    raise UserError(f'prepare: {name!r} is not a data set mmjax can prepare; valid names are '
                    f'{sorted(_PREPARERS)}.')
  return _PREPARERS[name]


# ----- options --------------------------------------------------------------------------------
def _parse_scalar(key: str, text: str, like: Any) -> Any:
  """``text`` as a value of ``like``'s type; a :class:`UserError` naming ``key`` otherwise."""
  try:
    if isinstance(like, bool):
      lowered = text.lower()
      if lowered not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return lowered in ('true', '1')
    if isinstance(like, int):
      return int(text)
    if isinstance(like, float):
      return float(text)
  except ValueError:
    raise UserError(f'prepare: --option {key}={text!r} must be a {type(like).__name__}.') from None
  return text


def resolve_options(entry: PreparerEntry, given: Mapping[str, Any] | Sequence[str] | None
                    ) -> dict[str, Any]:
  """The preparer's options with ``given`` applied, each of its default's type.

  Args:
    entry: the preparer.
    given: ``{key: value}`` or ``['KEY=VALUE', ...]`` (the command line's ``--option``); a
      string value is parsed to the default's type (a tuple from comma-separated items).

  Raises:
    UserError: for an unknown key, a malformed item or a value of the wrong type.
  """
  if given is None:
    given = {}
  if not isinstance(given, Mapping):
    pairs = {}
    for item in given:
      key, sep, value = str(item).partition('=')
      if not sep or not key:
        raise UserError(f'prepare: --option {item!r} must be KEY=VALUE; the options of '
                        f'{entry.name!r} are {_options_text(entry)}.')
      pairs[key] = value
    given = pairs
  resolved = dict(entry.options)
  for key, value in given.items():
    if key not in entry.options:
      raise UserError(f'prepare: {key!r} is not an option of {entry.name!r}; its options are '
                      f'{_options_text(entry)}.')
    default = entry.options[key]
    if isinstance(value, str) and isinstance(default, tuple):
      like = default[0] if default else ''
      value = tuple(_parse_scalar(key, item.strip(), like) for item in value.split(',')
                    if item.strip())
    elif isinstance(value, str):
      value = _parse_scalar(key, value, default)
    elif isinstance(default, tuple) and isinstance(value, list):
      value = tuple(value)
    resolved[key] = value
  return resolved


def _options_text(entry: PreparerEntry) -> str:
  if not entry.options:
    return 'none'
  return ', '.join(f'{k} (default {_plain(v)!r})' for k, v in entry.options.items())


def _plain(value: Any) -> Any:
  """``value`` as JSON-able data (tuples become lists)."""
  return json.loads(json.dumps(value))


# ----- records --------------------------------------------------------------------------------
def serialize_record(features: Mapping[str, np.ndarray], label: int, key: str) -> bytes:
  """One record: ``features`` plus ``label`` and ``key``, as a msgpack map (Flax's encoding of
  numpy arrays, so the arrays come back with their dtype and shape)."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  return serialization.msgpack_serialize({**features, 'label': int(label), 'key': str(key)})


def parse_record(data: bytes) -> dict[str, Any]:
  """A record written by :func:`serialize_record`: ``{feature: array, 'label': int, 'key': str}``."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  return serialization.msgpack_restore(data)


class PreparedSource:
  """The records of one split of a prepared folder, parsed: ``len(source)``, ``source[i]``.

  It wraps ``grain.sources.ArrayRecordDataSource`` over the split's shards, in order; a Grain
  random-access source, picklable for Grain's workers (the files are opened lazily, per process).
  """

  def __init__(self, paths: Sequence[str]):
    self.paths = tuple(paths)
    self._records = None

  def _source(self):
    if self._records is None:
      import grain  # pylint: disable=import-outside-toplevel
      self._records = grain.sources.ArrayRecordDataSource(list(self.paths))
    return self._records

  def __len__(self) -> int:
    return len(self._source())

  def __getitem__(self, index: int) -> dict[str, Any]:
    return parse_record(self._source()[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [parse_record(r) for r in self._source().__getitems__(list(indices))]

  def __getstate__(self) -> dict[str, Any]:
    return {'paths': self.paths, '_records': None}

  def __repr__(self) -> str:
    return f'PreparedSource({len(self.paths)} shards, first {self.paths[0] if self.paths else None})'


# ----- the plan -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shard:
  """One output shard: its file name and its examples, in order."""
  split: str
  index: int
  count: int
  examples: tuple[Example, ...]

  @property
  def name(self) -> str:
    return f'{self.split}-{self.index:05d}-of-{self.count:05d}'

  @property
  def file_name(self) -> str:
    return self.name + SHARD_SUFFIX


def _check_examples(name: str, examples: Any) -> list[Example]:
  """The preparer's example list, checked (a preparer's bug is a ValueError, not a UserError)."""
  examples = list(examples)
  keys = set()
  for example in examples:
    if not isinstance(example, Example):
      raise ValueError(f'preparer {name!r}: list_examples must return Example objects, got '
                       f'{type(example).__name__}.')
    if example.split not in SPLITS:
      raise ValueError(f'preparer {name!r}: example {example.key!r} has split '
                       f'{example.split!r}; valid splits are {list(SPLITS)}.')
    if isinstance(example.label, bool) or not isinstance(example.label, (int, np.integer)) or (
        example.label < 0):
      raise ValueError(f'preparer {name!r}: example {example.key!r} has label {example.label!r};'
                       ' labels are integers >= 0.')
    if example.key in keys:
      raise ValueError(f'preparer {name!r}: two examples have the key {example.key!r}.')
    keys.add(example.key)
  return examples


def plan_shards(examples: Sequence[Example], examples_per_shard: int) -> list[Shard]:
  """Each split's examples, in the listed order, cut into shards of ``examples_per_shard``."""
  shards = []
  for split in SPLITS:
    chosen = [e for e in examples if e.split == split]
    count = -(-len(chosen) // examples_per_shard)
    shards += [Shard(split, k, count,
                     tuple(chosen[k * examples_per_shard:(k + 1) * examples_per_shard]))
               for k in range(count)]
  return shards


def _digest(examples: Sequence[Example], raw: str) -> str:
  """A digest of the example list (keys, splits, labels, files relative to ``raw``, extras)."""
  described = [[e.key, e.split, int(e.label), [os.path.relpath(f, raw) for f in e.files],
                _plain(dict(e.extra))] for e in examples]
  return hashlib.sha256(json.dumps(described).encode()).hexdigest()


# ----- writing --------------------------------------------------------------------------------
def _write_json(path: str, value: Any) -> None:
  """Writes ``value`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
  _write_atomic(path, (json.dumps(value, indent=2, sort_keys=False) + '\n').encode())


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _read_json(path: str) -> Any:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


_PROCESS_PREPARERS: dict[Any, Any] = {}


def _preparer_in_process(factory: Callable[[], Any]) -> Any:
  """One preparer object per process and factory (a worker makes it once, not per shard)."""
  if factory not in _PROCESS_PREPARERS:
    _PROCESS_PREPARERS[factory] = factory()
  return _PROCESS_PREPARERS[factory]


def _exit_with_parent(parent: int) -> None:
  """A worker's initializer: a thread that ends the worker when its parent ``parent`` is gone
  (a killed ``mmjax prepare`` leaves no workers behind; a pool's own queues would keep them
  waiting)."""

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True).start()


def _decode(preparer: Any, example: Example, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
  features = preparer.decode(example, **options)
  if not isinstance(features, Mapping) or not features:
    raise ValueError(f'decode returned {type(features).__name__}, not a non-empty dict of arrays')
  checked = {}
  for key, value in features.items():
    if key in RESERVED_KEYS or not isinstance(key, str):
      raise ValueError(f'decode returned the feature key {key!r}; {list(RESERVED_KEYS)} are '
                       'written by mmjax prepare itself')
    checked[key] = np.asarray(value)
  return checked


def write_shard(factory: Callable[[], Any], options: Mapping[str, Any], shard: Shard,
                out: str) -> dict[str, Any]:
  """Decodes ``shard``'s examples and writes them as one ArrayRecord file under ``out``.

  The file is written under a temporary name and renamed when complete. Runs in a worker process
  (or in this one).

  Returns:
    The shard's record: ``{'records', 'labels', 'keys', 'failures', 'features'}``, where
    ``failures`` lists ``{'key', 'files', 'error'}`` of each example ``decode`` could not decode
    and ``features`` maps each feature key to ``{'dtype', 'shape'}`` of the first record.
  """
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  preparer = _preparer_in_process(factory)
  final = os.path.join(out, shard.file_name)
  partial = final + '.partial'
  writer = array_record_module.ArrayRecordWriter(partial, ARRAY_RECORD_OPTIONS)
  labels, keys, failures, spec = [], [], [], None
  try:
    for example in shard.examples:
      try:
        features = _decode(preparer, example, options)
      except Exception as error:  # pylint: disable=broad-except
        failures.append({'key': example.key, 'files': list(example.files),
                         'error': f'{type(error).__name__}: {error}'.strip()})
        continue
      writer.write(serialize_record(features, example.label, example.key))
      labels.append(int(example.label))
      keys.append(example.key)
      if spec is None:
        spec = {k: {'dtype': str(v.dtype), 'shape': list(v.shape)} for k, v in features.items()}
  finally:
    writer.close()
  os.replace(partial, final)
  return {'shard': shard.file_name, 'records': len(labels), 'labels': labels, 'keys': keys,
          'failures': failures, 'features': spec}


@dataclasses.dataclass(frozen=True)
class PrepareResult:
  """What :func:`prepare` made: the output folder, records per split and the failures."""
  out: str
  counts: dict[str, int]
  failures: list[dict[str, Any]]


def _check_paths(raw: str, out: str) -> tuple[str, str]:
  if not raw or not os.path.isdir(raw):
    raise UserError(f'prepare: --raw {raw!r} is not a folder; it must be the folder of the raw '
                    'files you downloaded.')
  if not out:
    raise UserError('prepare: --out is empty; it names the folder to write the records to.')
  raw, out = os.path.abspath(raw), os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'prepare: --out {out!r} is a file; it must be a new or empty folder, or '
                    'the folder of an interrupted run of the same command.')
  if out == raw or out.startswith(raw + os.sep):
    raise UserError(f'prepare: --out {out!r} is inside --raw {raw!r}; write the records '
                    'elsewhere.')
  return raw, out


def _check_resume(out: str, state: dict[str, Any]) -> bool:
  """Whether ``out`` holds a run of the same ``state`` (True) or is new/empty (False).

  Raises:
    UserError: ``out`` holds something else, or a run with another data set, raw folder,
      options, shard size or example list.
  """
  if not os.path.isdir(out) or not os.listdir(out):
    return False
  path = os.path.join(out, STATE_FILE)
  if not os.path.isfile(path):
    raise UserError(f'prepare: --out {out!r} is not empty and was not made by mmjax prepare (no '
                    f'{STATE_FILE}); choose a new or empty folder.')
  previous = _read_json(path)
  for key, value in state.items():
    if previous.get(key) != value:
      if key == 'examples':
        raise UserError(f'prepare: --out {out!r} was begun from other raw files (the example '
                        'list changed since); choose a new folder or restore the raw files.')
      raise UserError(f'prepare: --out {out!r} was begun with {key}={previous.get(key)!r}, not '
                      f'{value!r}; rerun with the same {key} to resume, or choose a new folder.')
  return True


def prepare(name: str, raw: str, out: str, *, options: Mapping[str, Any] | Sequence[str] | None
            = None, workers: int | None = None,
            examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
            progress: bool = True) -> PrepareResult:
  """Prepares data set ``name`` from the raw files in ``raw`` into ArrayRecord shards in ``out``.

  Everything about the user's input (name, options, raw folder and layout, output folder) is
  checked before ``out`` changes. A rerun resumes: finished shards are kept.

  Args:
    name: a registered preparer (:func:`registered_preparers`).
    raw: the folder of raw files.
    out: the output folder: new, empty, or that of an interrupted run of the same call.
    options: the preparer's options, ``{key: value}`` or ``['KEY=VALUE', ...]``.
    workers: decoding processes; 0 decodes in this process; None: the number of CPU cores.
    examples_per_shard: examples per shard (the unit of parallel work and of resume), >= 1.
    progress: show a tqdm progress bar on stderr.

  Returns:
    The :class:`PrepareResult`.

  Raises:
    UserError: a mistake in any argument, a wrong raw layout, an ``out`` that holds something
      else or another run.
  """
  entry = get_preparer(name)
  resolved = resolve_options(entry, options)
  if workers is None:
    workers = os.cpu_count() or 1
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise UserError(f'prepare: --workers {workers!r} must be an integer >= 0 (0: no worker '
                    'processes).')
  if (isinstance(examples_per_shard, bool) or not isinstance(examples_per_shard, int)
      or examples_per_shard < 1):
    raise UserError(f'prepare: --examples_per_shard {examples_per_shard!r} must be an integer '
                    '>= 1.')
  raw, out = _check_paths(raw, out)
  preparer = entry.factory()
  examples = _check_examples(name, preparer.list_examples(raw, **resolved))
  if not examples:
    raise UserError(f'prepare: found no examples of {name!r} in --raw {raw!r}; see '
                    f'docs/datasets.md for the layout it expects.')
  state = {'format': FORMAT_VERSION, 'name': name, 'raw': raw, 'options': _plain(resolved),
           'examples_per_shard': examples_per_shard, 'examples': _digest(examples, raw)}
  resuming = _check_resume(out, state)

  os.makedirs(os.path.join(out, PROGRESS_DIR), exist_ok=True)
  if not resuming:
    _write_json(os.path.join(out, STATE_FILE), state)
  shards = plan_shards(examples, examples_per_shard)
  records = {}
  for shard in shards:
    path = os.path.join(out, PROGRESS_DIR, shard.name + '.json')
    if os.path.isfile(path) and os.path.isfile(os.path.join(out, shard.file_name)):
      records[shard.name] = _read_json(path)
  pending = [s for s in shards if s.name not in records]
  _run_shards(entry, resolved, pending, out, workers, records,
              total=len(examples), done=sum(len(s.examples) for s in shards
                                            if s.name in records), progress=progress)
  return _finish(entry, preparer, resolved, state, shards, records, out)


def _run_shards(entry: PreparerEntry, options: Mapping[str, Any], pending: list[Shard], out: str,
                workers: int, records: dict[str, Any], *, total: int, done: int,
                progress: bool) -> None:
  """Writes the ``pending`` shards, in ``workers`` processes or in this one, recording each."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  def record(shard: Shard, result: dict[str, Any]) -> None:
    _write_json(os.path.join(out, PROGRESS_DIR, shard.name + '.json'), result)
    records[shard.name] = result
    bar.update(len(shard.examples))
    faults.maybe_fail('prepare_shard')

  with tqdm(total=total, initial=done, unit='ex', desc=f'prepare {entry.name}',
            disable=not progress, file=sys.stderr) as bar:
    if workers == 0 or not pending:
      for shard in pending:
        record(shard, write_shard(entry.factory, options, shard, out))
      return
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
        min(workers, len(pending)), mp_context=context, initializer=_exit_with_parent,
        initargs=(os.getpid(),)) as pool:
      futures = {pool.submit(write_shard, entry.factory, dict(options), shard, out): shard
                 for shard in pending}
      try:
        for future in concurrent.futures.as_completed(futures):
          record(futures[future], future.result())
      except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # no more shards after an error
        raise


def _finish(entry: PreparerEntry, preparer: Any, options: Mapping[str, Any],
            state: dict[str, Any], shards: list[Shard], records: dict[str, Any],
            out: str) -> PrepareResult:
  """Writes the failure report, the labels and ``metadata.json`` (last)."""
  from mmjax import __version__  # pylint: disable=import-outside-toplevel
  failures = [f for s in shards for f in records[s.name]['failures']]
  counts, labels, splits, features = {}, {}, {}, None
  for split in SPLITS:
    chosen = [s for s in shards if s.split == split]
    if not chosen:
      continue
    splits[split] = [s.file_name for s in chosen]
    labels[split] = np.array([y for s in chosen for y in records[s.name]['labels']], np.int32)
    counts[split] = int(len(labels[split]))
    features = features or next((records[s.name]['features'] for s in chosen
                                 if records[s.name]['features']), None)
  _write_json(os.path.join(out, FAILURES_JSON), {'count': len(failures), 'failures': failures})
  lines = [f'{len(failures)} example(s) could not be decoded and are not in the records.']
  lines += [f'{f["key"]}\t{", ".join(f["files"])}\t{f["error"]}' for f in failures]
  _write_atomic(os.path.join(out, FAILURES_TXT), ('\n'.join(lines) + '\n').encode())
  with tempfile.NamedTemporaryFile(dir=out, prefix='.tmp-', suffix='.npz', delete=False) as f:
    np.savez(f, **labels)
  os.replace(f.name, os.path.join(out, LABELS_FILE))
  metadata = {
      'name': entry.name, 'format': FORMAT_VERSION, 'mmjax_version': __version__,
      'raw': state['raw'], 'options': state['options'],
      'examples_per_shard': state['examples_per_shard'], 'counts': counts, 'shards': splits,
      'failures': len(failures), 'features': features, **_plain(preparer.metadata(**options))}
  _write_json(os.path.join(out, METADATA_FILE), metadata)
  summary = ', '.join(f'{s} {n}' for s, n in counts.items())
  where = f'; listed in {os.path.join(out, FAILURES_TXT)}' if failures else ''
  print(f'mmjax prepare {entry.name}: {sum(counts.values())} examples ({summary}) in {out}; '
        f'{len(failures)} could not be decoded{where}.', file=sys.stderr)
  return PrepareResult(out, counts, failures)


# ----- reading --------------------------------------------------------------------------------
def read_metadata(path: str, expected: str | None = None) -> dict[str, Any]:
  """The ``metadata.json`` of a finished prepared folder.

  Args:
    path: the folder ``mmjax prepare`` wrote.
    expected: the data set the folder must hold (its preparer's name), or None.

  Raises:
    UserError: ``path`` is empty, not a finished prepared folder, or one of another data set.
  """
  command = f'mmjax prepare {expected or "NAME"} --raw RAW --out {path or "DIR"}'
  if not path:
    raise UserError(f'data.path is empty; set it to a folder made by `{command}`.')
  file = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(file):
    unfinished = os.path.isfile(os.path.join(path, STATE_FILE))
    raise UserError(f'data.path={path!r} is not a finished prepared folder (no {METADATA_FILE})'
                    + ('; rerun the mmjax prepare command that began it to finish it.'
                       if unfinished else f'; make one with `{command}`.'))
  metadata = _read_json(file)
  if expected is not None and metadata.get('name') != expected:
    raise UserError(f'data.path={path!r} holds the prepared data set {metadata.get("name")!r}, '
                    f'not {expected!r}.')
  return metadata


def open_prepared(path: str, expected: str | None = None) -> dict[str, PreparedSource]:
  """``{split: PreparedSource}`` for the splits of a prepared folder (those it has)."""
  metadata = read_metadata(path, expected)
  return {split: PreparedSource([os.path.join(path, f) for f in files])
          for split, files in metadata['shards'].items()}


def read_labels(path: str) -> dict[str, np.ndarray]:
  """Each split's labels, int32 in record order, from the folder's ``labels.npz``."""
  with np.load(os.path.join(path, LABELS_FILE)) as labels:
    return {split: labels[split] for split in labels.files}


def prepared_dataset(path: str, name: str, features: Mapping[str, str], *,
                     num_classes: int | None = None,
                     preprocess: Mapping[str, Preprocess] | None = None,
                     augment: Mapping[str, Augment] | None = None,
                     worker_count: int = 0,
                     val_from_train: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None
                     = None) -> MultiModalDataset:
  """The data set of a prepared folder, read lazily through Grain (:class:`RecordSplit` s).

  Args:
    path: the prepared folder (``config.data.path``).
    name: the data set (preparer) name the folder must hold.
    features: ``{modality: record key}``.
    num_classes: the number of classes; by default the length of the metadata's ``classes``.
    preprocess: ``{modality: x -> array}``, every split, in Grain's workers.
    augment: ``{modality: (x, rng) -> array}``, training batches only.
    worker_count: Grain worker processes.
    val_from_train: when the folder has no val split, ``train labels -> (train indices, val
      indices)`` carves one out of train; required then.

  Raises:
    UserError: for ``path`` (see :func:`read_metadata`), a feature key the records lack.
  """
  metadata = read_metadata(path, name)
  sources = open_prepared(path, name)
  labels = read_labels(path)
  stored = set(metadata.get('features') or {})
  for modality, key in features.items():
    if key not in stored:
      raise UserError(f'data.path={path!r}: the records have no feature {key!r} for modality '
                      f'{modality!r}; they hold {sorted(stored)} (prepared with options '
                      f'{metadata.get("options")}).')
  positions = {split: np.arange(len(labels[split])) for split in sources}
  origin = {split: split for split in sources}
  if 'val' not in sources:
    if val_from_train is None or 'train' not in sources:
      raise UserError(f'data.path={path!r} has no val split and none can be carved from train.')
    train, val = val_from_train(labels['train'])
    positions['train'], positions['val'] = np.asarray(train), np.asarray(val)
    origin['val'] = 'train'
  missing = [s for s in SPLITS if s not in origin]
  if missing:
    raise UserError(f'data.path={path!r} has no {missing[0]} split.')
  splits = {s: RecordSplit(sources[origin[s]], features, 'label', preprocess=preprocess,
                           augment=augment, worker_count=worker_count, split_name=s,
                           indices=positions[s], labels=labels[origin[s]][positions[s]])
            for s in SPLITS}
  for split_name, split in splits.items():
    if not len(split):
      raise UserError(f'data.path={path!r}: the {split_name} split has no examples.')
  if num_classes is None and metadata.get('classes'):
    num_classes = len(metadata['classes'])
  resolved = resolve_num_classes({s: split.label for s, split in splits.items()}, num_classes)
  return MultiModalDataset(name, tuple(features), resolved, splits)


def iter_files(root: str, suffixes: Iterable[str]) -> list[str]:
  """Every file under ``root`` whose name ends with one of ``suffixes``, sorted."""
  suffixes = tuple(suffixes)
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.join(folder, n) for n in names if n.endswith(suffixes)]
  return sorted(found)
