"""Several hosts for real: two JAX processes (``jax.distributed``, CPU ``gloo`` collectives, two
CPU devices each) train together and end where one process with four devices ends, resume
included, each reading only its own rows of every batch (``tests/multihost_worker.py``)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import main, metrics

from conftest import restore_latest_state  # pylint: disable=wrong-import-order
from multihost_worker import multihost_config  # pylint: disable=wrong-import-order

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multihost_worker.py')
ROOT = os.path.dirname(os.path.dirname(WORKER))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_workers(tmp_path, workdir, stop, devices, processes):
  env = {**os.environ, 'JAX_NUM_CPU_DEVICES': str(devices),
         'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo', 'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': ROOT, 'MMJAX_COMPILATION_CACHE': str(tmp_path / 'jax_cache')}
  address = f'127.0.0.1:{_free_port()}'
  commands = [[sys.executable, WORKER, workdir, str(stop)]
              + ([address, str(i)] if processes > 1 else []) for i in range(processes)]
  running = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in commands]
  for process in running:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]


def _reads(workdir, process, stop):
  with open(f'{workdir}_reads_{process}_{stop}.json', encoding='utf-8') as f:
    return json.load(f)


#: How far the two runs may drift apart: the gradient's all-reduce adds the devices' partial sums
#: in another order over ``gloo`` than within one process, which changes the last bits.
RTOL, ATOL = 1e-5, 1e-7


def _assert_close_runs(workdir, other, config):
  """The latest checkpoints and the metrics of two runs: same steps, epochs and data position,
  values equal up to the order of the all-reduce's additions."""
  state, extra = restore_latest_state(workdir, config)
  other_state, other_extra = restore_latest_state(other, config)
  assert jax.tree.structure(state) == jax.tree.structure(other_state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(other_state)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  assert int(state.step) == int(other_state.step) == 2 * 8
  sums, other_sums = extra.pop('train_sums'), other_extra.pop('train_sums')
  assert extra == other_extra
  assert sums.keys() == other_sums.keys()
  np.testing.assert_allclose([sums[k] for k in sums], [other_sums[k] for k in sums], rtol=RTOL)
  records = metrics.without_timing(metrics.read_metrics(workdir))
  other_records = metrics.without_timing(metrics.read_metrics(other))
  assert [r.keys() for r in records] == [r.keys() for r in other_records]
  for r, o in zip(records, other_records):
    assert {k: v for k, v in r.items() if isinstance(v, str)} == {
        k: v for k, v in o.items() if isinstance(v, str)}
    keys = [k for k, v in r.items() if not isinstance(v, str)]
    np.testing.assert_allclose([r[k] for k in keys], [o[k] for k in keys], rtol=RTOL, atol=ATOL)


def test_two_processes_train_as_one_with_four_devices_resume_included(tmp_path):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  _run_workers(tmp_path, one, 0, devices=4, processes=1)
  _run_workers(tmp_path, two, 1, devices=2, processes=2)  # stops after epoch 1 ...
  _run_workers(tmp_path, two, 0, devices=2, processes=2)  # ... and resumes to the end
  _assert_close_runs(one, two, multihost_config())

  single = _reads(one, 0, 0)
  assert (single['process_count'], single['devices'], single['local_devices']) == (1, 4, 4)
  batch = multihost_config().batch_size
  for process in (0, 1):
    first, resumed = _reads(two, process, 1), _reads(two, process, 0)
    assert (first['process_count'], first['devices'], first['local_devices']) == (2, 4, 2)
    # Process p read only rows [p B / 2, (p + 1) B / 2) of every batch the single process read.
    mine = [rows[process * batch // 2:(process + 1) * batch // 2] for rows in single['train_reads']]
    assert first['train_reads'] + resumed['train_reads'] == mine


@pytest.mark.parametrize('argv', [
    ['--config.distributed=True'],
    ['--config.distributed.enabled=True', '--config.distributed.coordinator_address=localhost'],
])
def test_distributed_mistakes_are_one_line(argv):
  with pytest.raises(main.UserError, match=r'distributed'):
    command = main.parse_flags(['--config', 'configs/synthetic.py:smoke', '--workdir', '/tmp/x',
                                *argv])
    main.config_lib.validate(command.config)
