"""Initialisation cost: ways of computing a run's initial train state, per bundled model.

    nice -n 10 python benchmarks/init_cost.py [--repeats 2]

Each way runs in a fresh process (JAX keeps compiled functions, also of op-by-op execution,
for the rest of a process), with the persistent compilation cache off, in rounds alternating
the ways; the best round's seconds are printed, from the Trainer built until the state is on
the devices. Every way must give the parameters of ``jit`` bit for bit (checked: it prints the
largest difference, which must be 0).

- ``jit``: ``jax.jit(model.init)``, then the optimiser's and the method's states op by op;
- ``eager``: ``model.init`` op by op (no compilation of the whole), the rest the same;
- ``one_jit``: the model's, optimiser's and method's states in one compiled function, XLA's
  default options;
- ``init_state``: ``Trainer.init_state``: the same at LLVM optimisation level 1
  (``train.INIT_COMPILER_OPTIONS``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = '--child'

#: (name, config file argument): the bundled models (MLP, CNN, ResNet-18, MMTM).
MODELS = (('mlp (synthetic)', 'synthetic.py:smoke'), ('mlp (ucimf)', 'ucimf.py:smoke'),
          ('cnn (cgmnist)', 'cgmnist.py:smoke'),
          ('resnet18 (cgmnist)', 'cgmnist.py:smoke,encoder=resnet18'),
          ('mmtm cnn (cgmnist greedy)', 'cgmnist.py:smoke,method=greedy'))
WAYS = ('jit', 'eager', 'one_jit', 'init_state')


def _child(way: str, config_arg: str) -> None:
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmjax import main, train  # pylint: disable=import-outside-toplevel
  from mmjax.step import TrainState  # pylint: disable=import-outside-toplevel
  config = main.parse_flags(['--config', os.path.join(ROOT, 'configs', config_arg)],
                            workdir=False).config
  trainer = train.Trainer(config)
  start = time.perf_counter()
  if way == 'init_state':
    state = jax.block_until_ready(trainer.init_state())
  elif way == 'one_jit':
    initial_state = trainer._initial_state  # pylint: disable=protected-access
    state = jax.block_until_ready(jax.jit(initial_state, out_shardings=trainer.replicated)(
        jax.random.PRNGKey(trainer.seed)))
  else:
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(trainer.seed))
    example = {m: jnp.zeros((1, *s), jnp.float32) for m, s in trainer.input_shapes.items()}
    init = functools.partial(trainer.model.init, train=False)
    variables = dict((jax.jit(init) if way == 'jit' else init)(init_rng, example))
    params = variables.pop('params')
    state = TrainState(step=jnp.int32(0), params=params, model_state=variables,
                       opt_state=trainer.tx.init(params),
                       method_state=trainer.method.init_state(), rng=state_rng)
    state = jax.block_until_ready(jax.device_put(state, trainer.replicated))
  seconds = time.perf_counter() - start
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
  print('INIT ' + json.dumps({'seconds': seconds,
                              'leaves': [x.astype(np.float64).ravel().tolist() for x in leaves]}))


def measure(way: str, config_arg: str) -> dict:
  env = {**os.environ, 'MMJAX_COMPILATION_CACHE': 'off', 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD, way, config_arg],
                       env=env, capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('INIT ')]
  if not lines:
    raise RuntimeError(f'{way} {config_arg} failed:\n{out.stderr[-3000:]}')
  return json.loads(lines[0][len('INIT '):])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  print(f'load average: {os.getloadavg()}')
  best: dict[tuple[str, str], float] = {}
  differences: dict[tuple[str, str], float] = {}
  for _ in range(args.repeats):
    for name, config_arg in MODELS:
      runs = {way: measure(way, config_arg) for way in WAYS}
      for way, run in runs.items():
        best[name, way] = min(best.get((name, way), float('inf')), run['seconds'])
        differences[name, way] = max(
            (max((abs(a - b) for a, b in zip(x, y)), default=0.0)
             for x, y in zip(run['leaves'], runs['jit']['leaves'])), default=0.0)
  print(f'load average: {os.getloadavg()}')
  print(f"{'model':<28}" + ''.join(f'{w + " s":>14}{"max |diff|":>12}' for w in WAYS))
  for name, _ in MODELS:
    print(f'{name:<28}' + ''.join(f'{best[name, w]:>14.2f}{differences[name, w]:>12.3g}'
                                  for w in WAYS))


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == CHILD:
    _child(sys.argv[2], sys.argv[3])
  else:
    main()
