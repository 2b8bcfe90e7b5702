"""Writes the Colab-ready notebooks of this folder (nbformat v4) from the cells below.

    python notebooks/build_notebooks.py

Edit the cells here, not the ``.ipynb`` files, and rerun: the notebooks are generated without
outputs, so they stay small and reviewable. Every notebook starts with the same install and
parameters cells; ``MMJAX_NOTEBOOK_SMOKE=1`` makes its runs tiny (CI executes them so, see
``tests/test_notebooks.py``).
"""

from __future__ import annotations

import os

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

RUNTIME_NOTE = r"""
**Runtime.** The notebook runs on a CPU in minutes. To use an accelerator in Colab choose
*Runtime → Change runtime type → T4 GPU* (or *TPU*) before running the first cell: the install
cell then keeps the runtime's own JAX build (with CUDA or TPU support) and installs mmjax's other
dependencies around it; on a CPU runtime it installs the exact versions of `constraints.txt`.
mmjax uses every device JAX sees (`jax.devices()`) with no change to the code.

In a fresh Colab runtime, set the environment variable `MMJAX_GIT_URL` to the clone URL of the
mmjax repository first (`%env MMJAX_GIT_URL=https://...`); from a clone of the repository
(`jupyter lab notebooks/`) nothing is installed when mmjax is already importable. If pip reports
that it replaced packages the runtime had already imported, restart the session
(*Runtime → Restart session*) and run all cells again.
""".strip()

INSTALL = r'''
# Install mmjax in a fresh runtime; skipped when mmjax is already importable.
import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys


def find_checkout(start):
  """The mmjax repository holding ``start`` (or one of its parents), or None."""
  for folder in (start, *start.parents):
    if (folder / 'pyproject.toml').is_file() and (folder / 'mmjax' / '__init__.py').is_file():
      return folder
  return None


def has_accelerator():
  """Whether the runtime has a GPU or TPU (checked without importing JAX)."""
  return (os.path.exists('/dev/nvidia0') or os.path.exists('/dev/accel0')
          or 'COLAB_TPU_ADDR' in os.environ)


REPO = find_checkout(pathlib.Path.cwd()) or find_checkout(pathlib.Path.cwd() / 'mmjax')
if REPO is None:
  if not os.environ.get('MMJAX_GIT_URL'):
    raise RuntimeError('mmjax is not here: set MMJAX_GIT_URL to the clone URL of the mmjax '
                       'repository (%env MMJAX_GIT_URL=https://...) or run this notebook from a clone.')
  subprocess.run(['git', 'clone', '--depth', '1', os.environ['MMJAX_GIT_URL'], 'mmjax'], check=True)
  REPO = pathlib.Path('mmjax').resolve()
if importlib.util.find_spec('mmjax') is None:
  # The notebook extra adds ipywidgets, for progress bars drawn as widgets.
  pip = [sys.executable, '-m', 'pip', 'install', '--quiet', '-e', f'{REPO}[notebook]']
  if has_accelerator():
    # Keep the runtime's JAX build (CUDA or TPU); the rest follows pyproject.toml.
    pip += [f'{name}=={importlib.metadata.version(name)}' for name in ('jax', 'jaxlib')]
  else:
    pip += ['-c', str(REPO / 'constraints.txt')]
  subprocess.run(pip, check=True)
  print('installed mmjax from', REPO)
else:
  print('mmjax is already importable; nothing installed')
# The experiment configs (configs/*.py) live in the repository, next to the package.
sys.path.insert(0, str(REPO))
'''.strip()

PARAMETERS_NOTE = r"""
**Parameters.** `SMOKE` (the environment variable `MMJAX_NOTEBOOK_SMOKE=1`, as CI runs this
notebook) makes every run tiny: each config's `smoke` variant and one or two epochs. The cell is
tagged `parameters`, so papermill can set the values too. Runs are written under `RUNS`; running
the notebook again resumes them (a finished run is not trained again).
""".strip()


def parameters(epochs: int, smoke_epochs: int, name: str) -> str:
  """The parameters cell: the smoke switch, the epochs and the run folder."""
  return f'''
SMOKE = os.environ.get('MMJAX_NOTEBOOK_SMOKE', '') == '1'
NUM_EPOCHS = {smoke_epochs} if SMOKE else {epochs}
RUNS = pathlib.Path(os.environ.get('MMJAX_NOTEBOOK_RUNS', 'runs')) / '{name}' / ('smoke' if SMOKE else 'full')
'''.strip()


IMPORTS = r'''
import jax
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from configs import cgmnist
from mmjax import data, report, train


def config_for(arg):
  """The cgmnist config ``arg`` (``method=...``), small when SMOKE."""
  config = cgmnist.get_config(arg + (',smoke' if SMOKE else ''))
  config.num_epochs = NUM_EPOCHS
  config.progress_bar = not SMOKE
  return config


print('JAX', jax.__version__, 'on', jax.devices())
'''.strip()


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
  """A notebook from ``(kind, source)`` pairs, kind ``md``, ``code`` or ``parameters``."""
  nb = v4.new_notebook()
  nb.metadata = {
      'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
      'language_info': {'name': 'python'},
      'colab': {'provenance': []},
  }
  for kind, source in cells:
    source = source.strip()
    if kind == 'md':
      nb.cells.append(v4.new_markdown_cell(source))
    else:
      cell = v4.new_code_cell(source)
      if kind == 'parameters':
        cell.metadata['tags'] = ['parameters']
      nb.cells.append(cell)
  for i, cell in enumerate(nb.cells):
    cell.id = f'cell-{i:02d}'
  return nb


def header(title: str, intro: str, epochs: int, smoke_epochs: int, name: str) -> list[tuple[str, str]]:
  return [
      ('md', f'# {title}\n\n{intro.strip()}\n\n{RUNTIME_NOTE}'),
      ('code', INSTALL),
      ('md', PARAMETERS_NOTE),
      ('parameters', parameters(epochs, smoke_epochs, name)),
      ('code', IMPORTS),
  ]


QUICKSTART = header(
    'mmjax quickstart: modality imbalance in five minutes', r'''
A multi-modal network trained jointly on all its inputs is often *worse* than its best
single-modality network. Two reasons, one per paper that mmjax implements:

- **Overfitting** (Wang, Tran and Feiszli, CVPR 2020): the multi-modal network has more
  capacity and its modalities overfit and generalize at different rates, so one joint loss
  serves none of them well. *Gradient Blending* (G-Blend) reweights per-head losses.
- **Greedy learning** (Wu, Jastrzębski, Cho and Geras, ICML 2022): the network leans on the
  modality that is easiest to learn and under-trains the others.

This notebook trains a late-fusion network on **Colored-and-gray MNIST**: every digit is seen as
a gray image (`gray`) and as a coloured image (`color`). In train and val the colour predicts
the label well (each class has its own jittered colour); at test it is random. A network that learns the easy colour shortcut looks great on
val and falls at test. We train it naively (`vanilla`: the fused head's loss only) and with
G-Blend, then compare the heads' accuracies and look at the blend weights G-Blend chose.
''', epochs=10, smoke_epochs=1, name='quickstart') + [
    ('md', '## The data\n\nThe same digits in both modalities; colour follows the class in '
           'train and is random in test.'),
    ('code', r'''
dataset = data.get_dataset(config_for('method=vanilla').data, seed=0)
fig, axes = plt.subplots(3, 8, figsize=(10, 4))
for row, (split, modality) in enumerate([('train', 'gray'), ('train', 'color'), ('test', 'color')]):
  images = dataset.splits[split].inputs[modality]
  labels = dataset.splits[split].label
  for col, ax in enumerate(axes[row]):
    ax.imshow(images[col].squeeze(), cmap='gray' if modality == 'gray' else None)
    ax.set_title(f'{split} {modality}: {labels[col]}', fontsize=7)
    ax.axis('off')
plt.show()
print({split: len(s.label) for split, s in dataset.splits.items()}, 'examples')
'''),
    ('md', r'''
## Train: naive joint training, then G-Blend

`method=vanilla` trains on the fused head's loss alone; the unimodal heads are probes that
measure what each modality's features know without moving them. `method=gblend,estimator=online`
re-estimates the blend weights from each head's overfitting-to-generalization ratio at the start
of every super-epoch (here every two epochs after a first epoch). The MLP encoder keeps it fast on
a CPU; `encoder=cnn` (the default) is the paper-sized model for a GPU.
'''),
    ('code', r'''
vanilla_config = config_for('method=vanilla,encoder=mlp')
train.train_and_evaluate(vanilla_config, str(RUNS / 'vanilla'))

gblend_config = config_for('method=gblend,estimator=online,encoder=mlp')
gblend_config.method.warmup_epochs = 1
gblend_config.method.super_epoch = 2
train.train_and_evaluate(gblend_config, str(RUNS / 'gblend'));
'''),
    ('md', r'''
## Compare

Best val accuracy and test accuracy at the best-val epoch, per head. The unimodal heads show what
each modality contributes: a strong `color` head on val that falls towards chance (0.1) on test
is the shortcut at work (it stays a little above chance: the coloured image also shows the
digit's stroke).
'''),
    ('code', r'''
runs = report.load_runs([RUNS / 'vanilla', RUNS / 'gblend'])
display(Markdown(report.comparison_table(runs).to_markdown()))
'''),
    ('code', r'''
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained')
for ax, run in zip(axes, runs):
  report.plot_accuracy(run, splits=('val', 'test'), ax=ax)
plt.show()
'''),
    ('md', r'''
## What G-Blend chose

The blend weight of each head (`fused`, `gray`, `color`), estimated before the first epoch and
then at each super-epoch boundary. A head that overfits (its train loss falls faster than its
held-out loss) gets a small weight; one that generalizes gets a large one. See
`gradient_blending.ipynb` for the formulas and `greedy_learning.ipynb` for the other paper.
'''),
    ('code', r'''
report.plot_gblend_weights(runs[1])
'''),
]


GRADIENT_BLENDING = header(
    'Gradient Blending (G-Blend)', r'''
Wang, Tran and Feiszli, *What Makes Training Multi-modal Classification Networks Hard?*
(CVPR 2020). This notebook states the method, runs it on Colored-and-gray MNIST with mmjax and
diagnoses the run with `mmjax.report`.
''', epochs=10, smoke_epochs=1, name='gradient_blending') + [
    ('md', r'''
## The method

A late-fusion network has a head per modality and a fused head, each with a cross-entropy loss
$\mathcal{L}_i$. G-Blend trains on the blended loss (Eq. 6)

$$\mathcal{L}_{\text{blend}} = \sum_{i=1}^{k+1} w_i\, \mathcal{L}_i .$$

**Overfitting and generalization.** With $\mathcal{L}^{T}_N$ and $\mathcal{L}^{V}_N$ the loss on
training data $T$ and on a held-out set $V$ after $N$ epochs, the overfitting is
$O_N = \mathcal{L}^{V}_N - \mathcal{L}^{T}_N$. Over the next $n$ epochs

$$\Delta G_{N,n} = \mathcal{L}^{V}_N - \mathcal{L}^{V}_{N+n}, \qquad
  \Delta O_{N,n} = O_{N+n} - O_N, \qquad
  \text{OGR} = \left|\frac{\Delta O_{N,n}}{\Delta G_{N,n}}\right| .$$

A small OGR means the head gains generalization without overfitting.

**Optimal blend (Proposition 1).** Minimizing the overfitting of the blended gradient for a
given gain in generalization gives

$$w_i^{*} = \frac{1}{Z}\, \frac{\Delta G_i}{\Delta O_i^{2}}, \qquad
  Z = \sum_j \frac{\Delta G_j}{2\,\Delta O_j^{2}} .$$

mmjax's default (`method.weight_rule='paper'`) is this formula with the signed $\Delta O_i$
squared (only $|\Delta O_i|$ is floored, against division by zero); a head with
$\Delta G_i \le 0$ gets weight 0. `weight_rule='clamped'` keeps an older variant that clamps
$\Delta O_i$ from below first.

**Estimation.** Each head $i$ is trained alone from the current state for $n$ epochs and
$\Delta G_i$, $\Delta O_i$ are measured on $V$ (8% of the training data held out) and an equal
subset $T'$ of the training data. *Offline* (Algorithm 2) estimates once at the start and
keeps the weights; *online* (Algorithm 3) re-estimates at every super-epoch boundary. mmjax
runs the $k+1$ estimation trainings as one `jax.vmap`-ed program, and its `gradient` estimator
computes the first-order form of Proposition 1 inside the train step. The weights are arrays in
the train state: changing them never recompiles the step.
'''),
    ('md', r'''
## Run

G-Blend online against `uniform` (every head's loss with weight 1, the naive multi-task
baseline). Estimates before epoch 0, after a warm-up epoch, then every two epochs.
'''),
    ('code', r'''
uniform_config = config_for('method=uniform,encoder=mlp')
train.train_and_evaluate(uniform_config, str(RUNS / 'uniform'))

gblend_config = config_for('method=gblend,estimator=online,encoder=mlp')
gblend_config.method.warmup_epochs = 1
gblend_config.method.super_epoch = 2
train.train_and_evaluate(gblend_config, str(RUNS / 'gblend'))
print(gblend_config.method)
'''),
    ('md', r'''
## Diagnose

**The estimates.** Each record of the train split written at an estimate holds, per head,
$\Delta G$ (`delta_g`), $\Delta O$ (`delta_o`), the OGR and the weight $w$.
'''),
    ('code', r'''
gblend, uniform = report.load_run(RUNS / 'gblend'), report.load_run(RUNS / 'uniform')
heads = gblend.heads
rows = ['| epoch | quantity | ' + ' | '.join(heads) + ' |', '|---|---|' + '---|' * len(heads)]
for record in gblend.records:
  if record['split'] == 'train' and 'loss/fused' not in record:  # an estimate's own record
    for quantity in ('delta_g', 'delta_o', 'ogr', 'weight'):
      values = ' | '.join(f"{record[f'gblend/{quantity}/{h}']:.4f}" for h in heads)
      rows.append(f"| {record['epoch']} | {quantity} | {values} |")
display(Markdown('\n'.join(rows)))
'''),
    ('md', r'''
**Weights and OGR over time.** A new estimate takes effect where the step line jumps. A head
with a high OGR (it overfits more than it generalizes) should receive a low weight.
'''),
    ('code', r'''
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained')
report.plot_gblend_weights(gblend, ax=axes[0])
report.plot_ogr(gblend, ax=axes[1])
plt.show()
'''),
    ('md', r'''
**Accuracy and loss per head.** Compare the gap between train (dotted), val (dashed) and test
(solid) of each head: the overfitting G-Blend measures.
'''),
    ('code', r'''
fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout='constrained')
for column, run in enumerate((uniform, gblend)):
  report.plot_accuracy(run, ax=axes[0, column])
  report.plot_loss(run, ax=axes[1, column])
plt.show()
display(Markdown(report.comparison_table([uniform, gblend]).to_markdown()))
'''),
    ('md', r'''
The same table and plots come from the command line for any run directories:

```bash
python -m mmjax.report runs/gradient_blending/full/uniform runs/gradient_blending/full/gblend --out report/
```
'''),
]


GREEDY = header(
    'Greedy learning and balanced multi-modal learning', r'''
Wu, Jastrzębski, Cho and Geras, *Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks* (ICML 2022). This notebook states the two measures and the
algorithm, runs them on Colored-and-gray MNIST with mmjax and diagnoses the runs with
`mmjax.report`.
''', epochs=10, smoke_epochs=2, name='greedy_learning') + [
    ('md', r'''
## The measures

The network is an MMTM mid-fusion network: a branch per modality $m_0, m_1$, each with its own
head, and MMTM modules that let each branch rescale its features from both branches' squeezed
features. The prediction $f$ averages the branch logits.

**Conditional utilization rate** (Sec. 4.1). Let $f'_k$ be the same network in which branch $k$
no longer sees the other modality (its MMTM inputs from the other branch are replaced by their
mean over the training set), read from head $k$. With $A$ the accuracy,

$$u(m_{1-k} \mid m_k) = \frac{A(f) - A(f'_k)}{A(f)}, \qquad
  d_{\text{util}} = u(m_1 \mid m_0) - u(m_0 \mid m_1) .$$

A large $|d_{\text{util}}|$ means one branch relies on the other modality much more than the
other way round: the network is imbalanced.

**Conditional learning speed** (Sec. 4.2), a proxy of $d_{\text{util}}$ that is cheap during
training. For a parameter group $\theta$ and step $t$,
$\mu_t(\theta) = \|\nabla_\theta \mathcal{L}\|^2 / \|\theta\|^2$ and
$M(\theta) = \sum_t \mu_t(\theta)$. With $\theta_k$ branch $k$'s own parameters and $\theta'_k$
the fusion parameters feeding it,

$$s(m_{1-k} \mid m_k) = \log_{10} \frac{M(\theta'_k)}{M(\theta_k)}, \qquad
  d_{\text{speed}} = s(m_1 \mid m_0) - s(m_0 \mid m_1) .$$

## Balanced multi-modal learning (Algorithm 1)

From the second epoch on, when $|d_{\text{speed}}| > \alpha$ after a normal step, the next $Q$
steps are **re-balancing steps** for the branch that learns most through the other modality
(branch 0 if $d_{\text{speed}} > 0$, else 1): its MMTM scales are frozen to their running
average, so it must learn from its own modality alone. `mode=guided` is the algorithm,
`mode=random` re-balances a random branch (the paper's control) and `mode=off` is normal
training of the same network. In mmjax the choice of step is an array in the train state: one
compiled step serves all three.
'''),
    ('md', '## Run\n\nThe same MMTM network trained normally (`mode=off`) and with guided '
           're-balancing (`mode=guided`).'),
    ('code', r'''
runs = {}
for mode in ('off', 'guided'):
  config = config_for(f'method=greedy,mode={mode},encoder=mlp')
  train.train_and_evaluate(config, str(RUNS / mode))
  runs[mode] = report.load_run(RUNS / mode)
print(runs['guided'].config['method'])
'''),
    ('md', r'''
## Diagnose

**Learning speed and re-balancing.** $d_{\text{speed}}$ per epoch, the threshold $\pm\alpha$
dotted, and the epochs in which a branch took re-balancing steps shaded in its colour (from the
growth of the cumulative counts `greedy/rebalance/<modality>`). With `mode=off` nothing is
shaded: the speed gap is only measured.
'''),
    ('code', r'''
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained', sharey=True)
for ax, (mode, run) in zip(axes, runs.items()):
  report.plot_greedy_speed(run, ax=ax)
  ax.set_title(f'mode={mode}')
plt.show()
print('re-balancing windows (epochs):', report.rebalance_windows(runs['guided']))
'''),
    ('md', r'''
**Utilization.** $u(\cdot \mid m_k)$ per modality and $d_{\text{util}}$ (black) on val (dashed)
and test (solid). Balanced learning should bring $d_{\text{util}}$ towards 0.
'''),
    ('code', r'''
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained', sharey=True)
for ax, (mode, run) in zip(axes, runs.items()):
  report.plot_utilization(run, ax=ax)
  ax.set_title(f'mode={mode}')
plt.show()
'''),
    ('md', '**Accuracy.** Per head; on Colored-and-gray MNIST the test split is where relying on '
           'colour shows.'),
    ('code', r'''
report.plot_accuracy(list(runs.values()), splits=('test',))
'''),
    ('code', r'''
display(Markdown(report.comparison_table(list(runs.values())).to_markdown()))
'''),
]

NOTEBOOKS = {
    'quickstart.ipynb': QUICKSTART,
    'gradient_blending.ipynb': GRADIENT_BLENDING,
    'greedy_learning.ipynb': GREEDY,
}


def main() -> None:
  for name, cells in NOTEBOOKS.items():
    nb = notebook(cells)
    nbformat.validate(nb)
    nbformat.write(nb, os.path.join(HERE, name))
    print('wrote', os.path.join(HERE, name))


if __name__ == '__main__':
  main()
