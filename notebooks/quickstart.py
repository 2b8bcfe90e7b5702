# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # mmjax quickstart: modality imbalance in five minutes
#
# A multi-modal network trained jointly on all its inputs is often *worse* than its best
# single-modality network. Two reasons, one per paper that mmjax implements:
#
# - **Overfitting** (Wang, Tran and Feiszli, CVPR 2020): the multi-modal network has more
#   capacity and its modalities overfit and generalize at different rates, so one joint loss
#   serves none of them well. *Gradient Blending* (G-Blend) reweights per-head losses.
# - **Greedy learning** (Wu, Jastrzębski, Cho and Geras, ICML 2022): the network leans on the
#   modality that is easiest to learn and under-trains the others.
#
# This notebook trains a late-fusion network on **Colored-and-gray MNIST**: every digit is seen as
# a gray image (`gray`) and as a coloured image (`color`). In train and val the colour predicts
# the label well (each class has its own jittered colour); at test it is random. A network that
# learns the easy colour shortcut looks great on val and falls at test. We train it naively
# (`vanilla`: the fused head's loss only) and with G-Blend, then compare the heads' accuracies
# and look at the blend weights G-Blend chose.

# %% include="colab_setup"

# %% tags=["parameters"]
SMOKE = os.environ.get('MMJAX_NOTEBOOK_SMOKE', '') == '1'
NUM_EPOCHS = 1 if SMOKE else 10
RUNS = pathlib.Path(os.environ.get('MMJAX_NOTEBOOK_RUNS', 'runs')) / 'quickstart' / ('smoke' if SMOKE else 'full')

# %% include="cgmnist"

# %% [markdown]
# ## The data
#
# The same digits in both modalities; colour follows the class in train and is random in test.

# %%
from mmjax import data

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

# %% [markdown]
# ## Train: naive joint training, then G-Blend
#
# `method=vanilla` trains on the fused head's loss alone; the unimodal heads are probes that
# measure what each modality's features know without moving them. `method=gblend,estimator=online`
# re-estimates the blend weights from each head's overfitting-to-generalization ratio at the start
# of every super-epoch (here every two epochs after a first epoch). The MLP encoder keeps it fast on
# a CPU; `encoder=cnn` (the default) is the paper-sized model for a GPU.

# %%
vanilla_config = config_for('method=vanilla,encoder=mlp')
train.train_and_evaluate(vanilla_config, str(RUNS / 'vanilla'))

gblend_config = config_for('method=gblend,estimator=online,encoder=mlp')
gblend_config.method.warmup_epochs = 1
gblend_config.method.super_epoch = 2
train.train_and_evaluate(gblend_config, str(RUNS / 'gblend'));

# %% [markdown]
# ## Compare
#
# Best val accuracy and test accuracy at the best-val epoch, per head. The unimodal heads show what
# each modality contributes: a strong `color` head on val that falls towards chance (0.1) on test
# is the shortcut at work (it stays a little above chance: the coloured image also shows the
# digit's stroke).

# %%
runs = report.load_runs([RUNS / 'vanilla', RUNS / 'gblend'])
display(Markdown(report.comparison_table(runs).to_markdown()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained')
for ax, run in zip(axes, runs):
  report.plot_accuracy(run, splits=('val', 'test'), ax=ax)
plt.show()

# %% [markdown]
# ## What G-Blend chose
#
# The blend weight of each head (`fused`, `gray`, `color`), estimated before the first epoch and
# then at each super-epoch boundary. A head that overfits (its train loss falls faster than its
# held-out loss) gets a small weight; one that generalizes gets a large one. See
# `gradient_blending.ipynb` for the formulas and `greedy_learning.ipynb` for the other paper.

# %%
report.plot_gblend_weights(runs[1])
