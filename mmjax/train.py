"""The training loop: data -> step -> eval -> log -> checkpoint, resumable from the workdir.

``train_and_evaluate(config, workdir)`` is what ``python -m mmjax.main`` calls; tests and
notebooks call it directly. :class:`Trainer` holds what a run builds once (data, model,
method, evaluators, optimiser, compiled steps, mesh); the methods' host hooks and the
evaluators receive its :class:`~mmjax.context.RunContext` (``trainer.context``), not the trainer.
At the end of every epoch the run's ``summary.json`` is rewritten (:func:`run_summary`).
"""

from __future__ import annotations

import copy
import json
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax import (checkpointing, compilation_cache, config_lib, data, evaluators, faults, methods,
                   metrics, models, optim, workdir_lock)
from mmjax.context import RunContext
from mmjax.errors import UserError
from mmjax.progress import tqdm
from mmjax.step import TrainState, finalize_eval, make_eval_step, make_train_step

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'


_DISTRIBUTED = []

#: XLA options of the compiled initialisation on the CPU: LLVM's optimisation level 1 instead of
#: 2, as the function runs once. Its compilation takes about half the time (the ResNet-18 of
#: ``configs/cgmnist.py:encoder=resnet18`` 11.7 s instead of 24.8 s on a loaded 2-core machine)
#: and its results are bit for bit those of the default level; level 0 would be 4x faster but
#: changes initialisers' last bits (it forms no fused multiply-adds).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def initialize_distributed(options: Mapping[str, Any] | None = None) -> None:
  """Calls ``jax.distributed.initialize`` once per process (a run over several processes).

  ``options`` is ``config.distributed`` (:data:`config_lib.DISTRIBUTED_DEFAULTS`): its
  ``coordinator_address``, ``num_processes`` and ``process_id`` are passed on where given
  (not ``''``, ``0``, ``-1``); JAX detects the others from the cluster's environment (SLURM,
  Open MPI, a Cloud TPU pod slice). It must run before anything else uses JAX's devices.
  """
  if _DISTRIBUTED:
    return
  options = {**config_lib.DISTRIBUTED_DEFAULTS, **dict(options or {})}
  jax.distributed.initialize(
      coordinator_address=options['coordinator_address'] or None,
      num_processes=options['num_processes'] or None,
      process_id=None if options['process_id'] < 0 else options['process_id'])
  _DISTRIBUTED.append(True)


def _read_config_file(path: str) -> dict[str, Any]:
  """The config a run stored in ``path``; a :class:`UserError` naming the file if unreadable."""
  try:
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'{path} cannot be read as the config of the run in this workdir ({e}); '
                    'restore it, or choose a new --workdir.') from e
  if not isinstance(stored, dict):
    raise UserError(f'{path} holds a JSON {type(stored).__name__}, not the config of a run; '
                    'restore it, or choose a new --workdir.')
  return stored


def _check_writable(workdir: str) -> None:
  """Raises a :class:`UserError` unless ``workdir`` is, or can be made, a writable directory."""
  folder = os.path.abspath(workdir)
  while not os.path.lexists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise UserError(f'--workdir {workdir!r} is not a writable directory: {folder!r} is a file.')
  if not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f'--workdir {workdir!r} is not writable: no write permission on {folder!r}.')


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> list[str] | None:
  """Checks, reading only, that ``config`` may start or resume a run in ``workdir``.

  Returns None for a new run, else the accepted differences from the stored config (empty when
  there are none): the keys of :data:`config_lib.RESUMABLE_KEYS` and a ``num_epochs`` that may
  grow. Raises a :class:`UserError` for a workdir that cannot hold a run, an unreadable
  ``config.json`` or a run-defining difference.
  """
  _check_writable(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.lexists(path):
    return None
  return config_lib.resume_changes(_read_config_file(path), config_lib.to_dict(config))


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates ``workdir`` and writes ``config.json``, or checks that the run there may resume.

  After :func:`check_workdir` accepts, a new run's ``config.json`` is written, and a resumed
  run's is rewritten, atomically, when a resumable setting changed. Nothing in the workdir
  changes when the check fails.
  """
  accepted = check_workdir(workdir, config)
  if accepted is not None:
    if not accepted:
      return
    logging.warning('resuming %s with changed settings: %s', workdir, '; '.join(accepted))
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(config_lib.to_json(config))
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(f'cannot write {e.filename or path}: {e.strerror or e}.') from e


def _check_positive_int(config: ml_collections.ConfigDict, key: str) -> int:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f'{key} = {value!r} must be a positive integer.')
  return value


class Trainer:
  """What a run builds once: data, model, method, evaluators, optimiser, mesh, compiled steps,
  and the :class:`RunContext` (``context``) its method and evaluators see.

  ``encoders`` (modality -> ``flax.linen`` module) replaces those modalities' encoders of
  ``config.model.encoders``; ``model`` replaces the whole model. ``self.config`` is then the
  config that describes them (:func:`mmjax.models.config_with_objects`), as ``config.json`` holds
  it. See ``docs/your_model.md``.
  """

  def __init__(self, config: ml_collections.ConfigDict, *,
               encoders: Mapping[str, Any] | None = None, model: Any = None):
    if encoders or model is not None:
      config = models.config_with_objects(config, encoders=encoders, model=model)
    self.config = config
    for key in ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps'):
      _check_positive_int(config, key)
    every = config.get('checkpoint_every_steps') or 0
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
      raise ValueError(f'checkpoint_every_steps = {every!r} must be 0 (epoch ends only) or a '
                       'positive integer.')
    self.seed = int(config.seed)
    dataset = data.get_dataset(config.data, seed=self.seed)
    method_cls = methods.get_method_class(config.method.name)
    self.modalities = method_cls.model_modalities(config.method, dataset.modalities)
    if model is not None:
      self.model = model
      self.heads = tuple(getattr(model, 'heads', ()))
    else:
      model_config = copy.deepcopy(config.model)
      encoder_configs = dict(model_config.encoders)
      missing = [m for m in dataset.modalities if m not in encoder_configs]
      if missing:
        raise ValueError(f'model.encoders has no encoder for modality {missing[0]!r}; the data '
                         f'set {dataset.name!r} has modalities {list(dataset.modalities)}.')
      with model_config.unlocked():
        model_config.encoders = {m: encoder_configs[m] for m in self.modalities}
      self.model = models.build_model(
          model_config, self.modalities, dataset.num_classes,
          encoders={m: e for m, e in (encoders or {}).items() if m in self.modalities})
      self.heads = tuple(self.model.heads)
    self.method = methods.build_method(config.method, self.heads, self.modalities)
    self.dataset = self.method.prepare_data(dataset, self.seed)
    self.input_shapes = {m: tuple(self.dataset.modality_shapes[m]) for m in self.modalities}
    if model is not None:
      models.check_model(model, self.modalities, dataset.num_classes, self.input_shapes)

    self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.replicated = NamedSharding(self.mesh, P())
    n_dev = self.mesh.size
    for key in ('batch_size', 'eval_batch_size'):
      if config[key] % n_dev:
        raise ValueError(f'{key} = {config[key]} must be divisible by the number of devices ({n_dev}).')
    self.train_iterator = data.TrainIterator(self.dataset.splits['train'], config.batch_size, self.seed)
    self._checked_train_batch = False
    self.steps_per_epoch = self.train_iterator.steps_per_epoch
    self.tx = optim.build_optimizer(config.optimizer, self.steps_per_epoch, config.num_epochs)
    self.learning_rate_fn = optim.learning_rate_schedule(config.optimizer, self.steps_per_epoch,
                                                         config.num_epochs)
    self.context = RunContext(
        config=config, seed=self.seed, dataset=self.dataset, model=self.model,
        modalities=self.modalities, heads=self.heads, input_shapes=self.input_shapes,
        mesh=self.mesh, replicated=self.replicated, steps_per_epoch=self.steps_per_epoch,
        train_iterator=self.train_iterator, tx=self.tx, shard=self.shard,
        put_global=self.put_global, evaluate=self.evaluate, eval_totals=self.eval_totals)
    self.method.setup(self.context)
    self.evaluators = evaluators.build_evaluators(config.evals)
    for evaluator in self.evaluators:
      evaluator.setup(self.context)

    self.train_step = make_train_step(self.model, self.method, self.tx)
    self.eval_step = make_eval_step(self.model, self.method)
    donate = (0,) if jax.default_backend() != 'cpu' else ()
    self.jit_train_step = jax.jit(self.train_step, donate_argnums=donate)
    self.jit_eval_step = jax.jit(self.eval_step)

  # ----- state --------------------------------------------------------------------------------
  def init_state(self) -> TrainState:
    """A fresh train state, replicated over the mesh.

    One compiled function computes the model's initial variables (``model.init`` from
    ``seed``, as :func:`mmjax.models.init_variables`), the optimiser's and the method's states
    and places them on the mesh: one compilation instead of one per operation, kept in the
    persistent compilation cache (:mod:`mmjax.compilation_cache`). On the CPU it compiles with
    :data:`INIT_COMPILER_OPTIONS`, which halve its compilation time and give the same bits
    (``benchmarks/init_cost.py``).
    """
    rng = jax.random.PRNGKey(self.seed)
    lowered = jax.jit(self._initial_state, out_shardings=self.replicated).lower(rng)
    options = INIT_COMPILER_OPTIONS if jax.default_backend() == 'cpu' else None
    return lowered.compile(compiler_options=options)(rng)

  def _initial_state(self, rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    example = {m: jnp.zeros((1, *s), jnp.float32) for m, s in self.input_shapes.items()}
    variables = dict(self.model.init(init_rng, example, train=False))
    params = variables.pop('params')
    return TrainState(step=jnp.int32(0), params=params, model_state=variables,
                      opt_state=self.tx.init(params), method_state=self.method.init_state(),
                      rng=state_rng)

  # ----- data ---------------------------------------------------------------------------------
  def check_batch(self, batch: Mapping[str, Any]) -> None:
    """Raises a clear error when a batch does not fit the model's inputs."""
    inputs = batch['inputs']
    for m, shape in self.input_shapes.items():
      if m not in inputs:
        raise ValueError(f'batch has no modality {m!r}; the model takes {list(self.input_shapes)}.')
      got = tuple(np.shape(inputs[m])[1:])
      if got != shape:
        raise ValueError(f'batch modality {m!r} has per-example shape {got}; the model was built '
                         f'for {shape}.')

  def shard(self, batch: Mapping[str, Any], *, check: bool = True) -> dict[str, Any]:
    """Puts this host's rows of a global batch on the mesh, split over the ``data`` axis
    (model modalities only), after :meth:`check_batch` unless ``check=False``.

    With one process the whole batch goes over in one ``jax.device_put``; with several, each
    array is assembled from every host's rows (:meth:`put_global`).
    """
    if check:
      self.check_batch(batch)
    host = dict(batch)
    host['inputs'] = {m: batch['inputs'][m] for m in self.modalities}
    if jax.process_count() == 1:
      sharded = jax.device_put(jax.tree.map(np.asarray, host), self.data_sharding)
    else:
      sharded = jax.tree.map(self.put_global, host)
    faults.maybe_fail('shard')
    return sharded

  def put_global(self, x: Any) -> jax.Array:
    """This host's rows ``x`` of a global array, as the global array sharded over ``data``.

    Every host reads only its own rows of each global batch (``data.TrainIterator`` and
    ``data.eval_batches`` give process ``p`` of ``P`` rows ``[p B / P, (p + 1) B / P)``), so the
    global array has ``P`` times the rows of ``x``; several hosts (``jax.distributed``) see the
    same data as one.
    """
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
    return jax.make_array_from_process_local_data(self.data_sharding, x, global_shape)

  def next_batch(self) -> dict[str, Any]:
    """The next training batch (with what the method adds to it) on the mesh.

    The batch shapes are checked on the first batch only: every later batch of the stream has
    the same shapes.
    """
    batch = self.shard(self.method.extend_batch(next(self.train_iterator)),
                       check=not self._checked_train_batch)
    self._checked_train_batch = True
    return batch

  def prefetch(self, num_batches: int) -> 'BatchPrefetcher':
    """The next ``num_batches`` of :meth:`next_batch`, prepared :data:`PREFETCH_BATCHES` ahead
    in a background thread (:class:`BatchPrefetcher`)."""
    return BatchPrefetcher(self.next_batch, num_batches)

  # ----- evaluation ---------------------------------------------------------------------------
  def evaluate(self, state: TrainState, split: str | data.Split, eval_step=None) -> dict[str, float]:
    """Mean loss and accuracy per head over a whole split (padding masked out)."""
    return finalize_eval(self.eval_totals(state, split, eval_step or self.jit_eval_step))

  def eval_totals(self, state: Any, split: str | data.Split, sums_fn) -> Any:
    """Sums ``sums_fn(state, batch, mask)`` over a whole split in padded batches (on the host).

    ``sums_fn`` is a compiled function returning masked sums (e.g. the eval step); methods
    use this for their own passes over a split (stacked states, squeeze statistics).
    """
    split_data = self.dataset.splits[split] if isinstance(split, str) else split
    totals = None
    for batch, mask in data.eval_batches(split_data, self.config.eval_batch_size):
      sums = sums_fn(state, self.shard(batch), self.put_global(mask))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      faults.maybe_fail('eval_batch')
    return jax.device_get(totals)


#: How many training batches :class:`BatchPrefetcher` prepares ahead of the step.
PREFETCH_BATCHES = 2


class BatchPrefetcher:
  """``num_batches`` results of ``next_batch()``, computed in order by a background thread
  that stays at most :data:`PREFETCH_BATCHES` batches ahead of the consumer.

  The host work of a batch (reading, shuffling, ``device_put`` to the mesh) then overlaps the
  compiled steps already dispatched. The thread stops after ``num_batches`` (an epoch's
  remaining steps), so when the consumer has taken them all the data iterator stands exactly
  where taking them one by one would have left it; the train loop saves the position of the
  batches it consumed, never of those prepared ahead. An exception while preparing a batch is
  raised by the ``next()`` that would have returned it. :meth:`close` stops the thread early.
  """

  def __init__(self, next_batch: Callable[[], Any], num_batches: int):
    self._ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    self._stop = threading.Event()
    self._remaining = num_batches
    self._thread = threading.Thread(target=self._produce, args=(next_batch, num_batches),
                                    daemon=True, name='mmjax-prefetch')
    self._thread.start()

  def _produce(self, next_batch: Callable[[], Any], num_batches: int) -> None:
    for _ in range(num_batches):
      try:
        item = (next_batch(), None)
      except Exception as e:  # pylint: disable=broad-except  (re-raised by the consumer)
        item = (None, e)
      while not self._stop.is_set():
        try:
          self._ready.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self._stop.is_set() or item[1] is not None:
        return

  def __iter__(self) -> 'BatchPrefetcher':
    return self

  def __next__(self) -> Any:
    if self._remaining <= 0:
      raise StopIteration
    batch, error = self._ready.get()
    self._remaining -= 1
    if error is not None:
      self.close()
      raise error
    return batch

  def close(self) -> None:
    """Stops the thread (batches prepared but not taken are dropped) and waits for it."""
    self._stop.set()
    self._thread.join()


def _first_nonfinite(step_metrics: list[dict[str, np.ndarray]], first_step: int
                     ) -> tuple[int, list[str]] | None:
  """The first step with a non-finite loss, and the losses that were non-finite there."""
  for i, m in enumerate(step_metrics):
    bad = [k for k, v in m.items() if (k.startswith('loss/') or k == 'objective')
           and not np.isfinite(v)]
    if bad:
      return first_step + i, bad
  return None


class EpochSums:
  """Running float64 sums of the per-step train metrics of one epoch, in step order.

  The epoch's train record holds their means. The sums (exact in JSON) go into mid-epoch
  checkpoints, so a run resumed inside an epoch reports the same means as an uninterrupted one.
  """

  def __init__(self, sums: Mapping[str, float] | None = None, count: int = 0):
    self.sums = dict(sums or {})
    self.count = count

  def add(self, step_metrics: Iterable[Mapping[str, np.ndarray]]) -> None:
    for m in step_metrics:
      for k, v in m.items():
        self.sums[k] = self.sums.get(k, 0.0) + float(v)
      self.count += 1

  def means(self) -> dict[str, float]:
    return {k: v / self.count for k, v in self.sums.items()}


def _mean_metrics(step_metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
  sums = EpochSums()
  sums.add(step_metrics)
  return sums.means()


def _postfix(means: Mapping[str, float], heads: Iterable[str]) -> dict[str, str]:
  return {h: f"{means[f'loss/{h}']:.3f}/{means[f'accuracy/{h}']:.3f}" for h in heads}


def _summary_table(summary: Mapping[str, Any]) -> str:
  heads = list(summary['best_val'])
  lines = [f"mmjax run finished: {summary['workdir']}",
           f"best val epoch {summary['best_epoch']} (selected on accuracy/{summary['selection_head']})",
           f"{'head':<12}{'best val acc':>14}{'test acc @best':>16}{'final test acc':>16}"]
  for h in heads:
    lines.append(f"{h:<12}{summary['best_val'][h]:>14.4f}{summary['test_at_best'][h]:>16.4f}"
                 f"{summary['final_test'][h]:>16.4f}")
  return '\n'.join(lines)


def run_summary(workdir: str, trainer: Trainer) -> dict[str, Any]:
  """The run's ``summary.json``: what it is and how it went, from ``metrics.jsonl``.

  ``method``, ``heads``, ``modalities``, ``selection_head`` (whose val accuracy picks the best
  epoch), ``evals`` (the evaluators run), ``plots`` (the report plots for its metrics: accuracy
  and loss, then the method's and the evaluators' ``PLOTS``), ``num_epochs``, ``finished`` and
  :func:`mmjax.metrics.summarize`'s ``epochs``, ``best_epoch``, ``best_val``, ``test_at_best``
  and ``final_test``. Empty before the first val record.
  """
  method = trainer.method
  scores = metrics.summarize(metrics.read_metrics(workdir), trainer.heads, method.selection_head)
  if not scores:
    return {}
  plots = ['accuracy', 'loss', *method.PLOTS]
  plots += [p for evaluator in trainer.evaluators for p in evaluator.PLOTS if p not in plots]
  return {'method': method.name, 'heads': list(trainer.heads),
          'modalities': list(trainer.modalities), 'evals': [e.name for e in trainer.evaluators],
          'plots': plots, 'num_epochs': trainer.config.num_epochs,
          'finished': scores['epochs'] >= trainer.config.num_epochs, **scores}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_epoch: int | None = None,
                       encoders: Mapping[str, Any] | None = None,
                       model: Any = None) -> dict[str, Any]:
  """Trains and evaluates the model described by ``config`` in ``workdir``.

  ``encoders`` (modality -> ``flax.linen`` module) and ``model`` (a whole model) are objects of
  the user's used instead of what ``config.model`` names (``docs/your_model.md``); the run's
  ``config.json`` records their classes and options, and a resume must pass equal objects.

  Resumes from the latest checkpoint in ``workdir`` when there is one. ``stop_after_epoch``
  ends the run after that epoch's checkpoint, as a preemption would (tests use it).
  Returns the run summary: best val accuracy per head, test accuracy at the best-val epoch
  and at the end. A bad config, data set or workdir raises a :class:`UserError` before
  anything in ``workdir`` is created or changed; a second process on the same ``workdir`` is
  refused while this one runs.
  """
  config_lib.validate(config)
  if encoders or model is not None:
    try:
      config = models.config_with_objects(config, encoders=encoders, model=model)
    except ValueError as e:
      raise UserError(str(e)) from e
  check_workdir(workdir, config)  # cheap, before the data set and the model are built
  compilation_cache.enable()
  distributed = config_lib.distributed_options(config)
  if distributed['enabled']:
    try:
      initialize_distributed(distributed)
    except (RuntimeError, ValueError) as e:
      raise UserError('distributed.enabled = True, but jax.distributed.initialize failed: '
                      f"{' '.join(str(e).split())}") from e
  try:
    # Everything is checked (data, model, method, optimiser, batch sizes against the data,
    # devices) before prepare_workdir writes anything.
    trainer = Trainer(config, encoders=encoders, model=model)
    state = trainer.init_state()
  except UserError:
    raise
  except ValueError as e:
    raise UserError(str(e)) from e
  lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    if jax.process_index() == 0:
      prepare_workdir(workdir, config)
    logging.warning('JAX process %d of %d, devices: %s', jax.process_index(), jax.process_count(),
                    jax.devices())
    return _train(config, workdir, stop_after_epoch, trainer, state)
  finally:
    if lock is not None:
      lock.release()


def _epoch_line(epoch: int, num_epochs: int, train_record: Mapping[str, float],
                val: Mapping[str, float], heads: Iterable[str]) -> str:
  return (f"epoch {epoch}/{num_epochs}: {train_record['steps_per_second']:.1f} steps/s, "
          f"lr {train_record['learning_rate']:.4g} | train " +
          ' '.join(f"{h}={train_record[f'accuracy/{h}']:.3f}" for h in heads) + ' | val ' +
          ' '.join(f"{h}={val[f'accuracy/{h}']:.3f}" for h in heads))


def _train(config: ml_collections.ConfigDict, workdir: str, stop_after_epoch: int | None,
           trainer: Trainer, state: TrainState) -> dict[str, Any]:
  """The loop of :func:`train_and_evaluate`, with the workdir locked and prepared."""
  method = trainer.method
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=config.checkpoint_keep)
  selection_head = method.selection_head
  every = int(config.get('checkpoint_every_steps') or 0)
  lead = jax.process_index() == 0
  start_epoch, epoch_step, sums, num_records = 0, 0, EpochSums(), 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, extra = restored
    trainer.train_iterator.set_state(extra['data_iterator'])
    start_epoch, epoch_step = int(extra['epoch']), int(extra.get('epoch_step', 0))
    sums = EpochSums(extra.get('train_sums'), epoch_step)
    num_records = int(extra['metrics_records'])
  if lead:
    metrics.truncate_metrics(workdir, num_records)
  writer = metrics.MetricWriter(workdir, records=num_records, enabled=lead)
  show_bar = bool(config.progress_bar) and lead

  def position(epoch, steps_done, iterator_step):  # copied: Orbax writes it later, in the background
    return {'epoch': epoch, 'epoch_step': steps_done, 'train_sums': dict(sums.sums),
            'metrics_records': writer.records,
            'data_iterator': {**trainer.train_iterator.get_state(), 'step': iterator_step}}

  try:
    for epoch in range(start_epoch, config.num_epochs):
      if epoch_step == 0:
        faults.maybe_fail('epoch_start')
        state, hook_metrics = method.on_epoch_start(trainer.context, state, epoch)
        faults.maybe_fail('epoch_hook_done')
        if hook_metrics:
          writer.write(int(jax.device_get(state.step)), epoch, 'train', hook_metrics)
      else:
        method.on_resume_within_epoch(trainer.context, state, epoch)
      first_step = int(jax.device_get(state.step)) - epoch_step
      pending, recent = [], []
      started = time.perf_counter()
      bar = tqdm(total=trainer.steps_per_epoch, initial=epoch_step, leave=False, file=sys.stderr,
                 desc=f'epoch {epoch + 1}/{config.num_epochs}', disable=not show_bar)
      # The data position of the batch of step i is first_batch + (i - epoch_step): batches
      # prepared ahead by the prefetcher are not in a checkpoint's position.
      first_batch = trainer.train_iterator.step
      batches = trainer.prefetch(trainer.steps_per_epoch - epoch_step)
      try:
        for i in range(epoch_step, trainer.steps_per_epoch):
          state, step_metrics = trainer.jit_train_step(state, next(batches))
          faults.maybe_fail('train_step')
          pending.append(step_metrics)
          mid_epoch_checkpoint = (every and (first_step + i + 1) % every == 0
                                  and i + 1 < trainer.steps_per_epoch)
          if ((i + 1) % config.log_every_steps == 0 or i + 1 == trainer.steps_per_epoch
              or mid_epoch_checkpoint):
            fetched = jax.device_get(pending)
            bad = _first_nonfinite(fetched, first_step + sums.count)
            if bad is not None:
              last = ckpt.latest_step()
              kept = ('no checkpoint yet' if last is None
                      else f'its last good checkpoint (step {last}) is intact in {workdir}')
              raise FloatingPointError(
                  f"non-finite {', '.join(bad[1])} at step {bad[0]} (epoch {epoch + 1}); the run "
                  f'stopped and {kept}.')
            sums.add(fetched)
            recent = (recent + fetched)[-config.log_every_steps:]
            pending = []
            bar.set_postfix(_postfix(_mean_metrics(recent), trainer.heads))
          if mid_epoch_checkpoint:
            ckpt.save(first_step + i + 1, state,
                      position(epoch, i + 1, first_batch + i + 1 - epoch_step))
            faults.maybe_fail('checkpoint_saved')
          bar.update(1)
      finally:
        batches.close()
      bar.close()
      step = int(jax.device_get(state.step))
      train_record = sums.means()
      train_record.update({k: float(v) for k, v in
                           jax.device_get(method.state_metrics(state.method_state)).items()})
      train_record['learning_rate'] = optim.learning_rate(trainer.learning_rate_fn,
                                                          state.opt_state, step - 1)
      train_record['steps_per_second'] = ((trainer.steps_per_epoch - epoch_step)
                                          / (time.perf_counter() - started))
      writer.write(step, epoch + 1, 'train', train_record)
      evals = {}
      for split in ('val', 'test'):
        evals[split] = trainer.evaluate(state, split)
        for evaluator in trainer.evaluators:
          evals[split].update(evaluator.evaluate(trainer.context, state, split, evals[split]))
        writer.write(step, epoch + 1, split, evals[split])
      writer.flush()
      epoch_step, sums = 0, EpochSums()
      ckpt.save(step, state, position(epoch + 1, 0, trainer.train_iterator.step),
                val_accuracy=evals['val'][f'accuracy/{selection_head}'])
      faults.maybe_fail('checkpoint_saved')
      if lead:
        metrics.write_summary(workdir, run_summary(workdir, trainer))
      if lead:
        line = _epoch_line(epoch + 1, config.num_epochs, train_record, evals['val'], trainer.heads)
        if show_bar:
          tqdm.write(line, file=sys.stderr)
        else:
          print(line, file=sys.stderr, flush=True)
      faults.maybe_fail('epoch_end')
      if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
        break
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  summary = run_summary(workdir, trainer)
  if lead:  # also when a rerun of a finished run (or one killed before the epoch's write) trains nothing
    metrics.write_summary(workdir, summary)
  summary = {'workdir': workdir, **summary} if summary else {}
  if summary and lead and (stop_after_epoch is None or stop_after_epoch >= config.num_epochs):
    print(_summary_table(summary))
  return summary
