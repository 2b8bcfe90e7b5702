"""Trains four steps of several configs and saves every resulting array, to compare two trees.

    PYTHONPATH=OLD_TREE python benchmarks/train_state_dump.py /tmp/old.npz   # e.g. main
    PYTHONPATH=$PWD python benchmarks/train_state_dump.py /tmp/new.npz
    python benchmarks/train_state_dump.py --compare /tmp/old.npz /tmp/new.npz

Saved: every parameter, non-parameter model state (BatchNorm statistics), method-state leaf and
step metric after four train steps of ``vanilla``, ``greedy`` (MMTM) and ``gblend`` with the
``gradient`` estimator on the tiny synthetic config of the tests, and ``greedy`` on MMTM with
ResNet-18 encoders (CG-MNIST smoke, width 4). ``--compare`` prints the keys whose arrays differ
in any bit. Used to check that ``model.dtype = 'float32'`` (the default) is main's model exactly.
"""

import os
import sys

import jax
import numpy as np

#: The tree whose code is run: the first entry of PYTHONPATH (this repository if unset).
TREE = os.path.abspath(os.environ.get('PYTHONPATH', '').split(':')[0] or
                       os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dump(path: str) -> None:
  sys.path[:0] = [TREE, os.path.join(TREE, 'tests')]
  from conftest import tiny_synthetic_config  # pylint: disable=import-outside-toplevel
  from configs import cgmnist  # pylint: disable=import-outside-toplevel
  from mmjax import train  # pylint: disable=import-outside-toplevel
  cases = {'synthetic-vanilla': tiny_synthetic_config('vanilla'),
           'synthetic-greedy': tiny_synthetic_config('greedy'),
           'synthetic-gblend-gradient': tiny_synthetic_config('gblend', estimator='gradient'),
           'cgmnist-resnet18-greedy': cgmnist.get_config('method=greedy,smoke,encoder=resnet18')}
  for m in ('gray', 'color'):
    cases['cgmnist-resnet18-greedy'].model.encoders[m].width = 4
  out = {}
  for name, config in cases.items():
    config.progress_bar = False
    trainer = train.Trainer(config)
    state = trainer.init_state()
    for _ in range(4):
      state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    leaves = jax.tree.leaves((state.params, state.model_state, state.method_state))
    out.update({f'{name}/{i}': np.asarray(leaf) for i, leaf in enumerate(leaves)})
    out.update({f'{name}/metric/{k}': np.asarray(v) for k, v in step_metrics.items()})
  np.savez(path, **out)
  print(f'{len(out)} arrays -> {path}')


def compare(old_path: str, new_path: str) -> None:
  old, new = np.load(old_path), np.load(new_path)
  keys = sorted(set(old.files) | set(new.files))
  differ = [k for k in keys if k not in old.files or k not in new.files
            or old[k].dtype != new[k].dtype or not np.array_equal(old[k], new[k])]
  print(f'{len(keys)} arrays, {len(differ)} differ' + (f': {differ}' if differ else ''))


if __name__ == '__main__':
  if sys.argv[1] == '--compare':
    compare(sys.argv[2], sys.argv[3])
  else:
    dump(sys.argv[1])
