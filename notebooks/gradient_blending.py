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
# # Gradient Blending (G-Blend)
#
# Wang, Tran and Feiszli, *What Makes Training Multi-modal Classification Networks Hard?*
# (CVPR 2020). This notebook states the method, runs it on Colored-and-gray MNIST with mmjax and
# diagnoses the run with `mmjax.report`.

# %% include="colab_setup"

# %% tags=["parameters"]
SMOKE = os.environ.get('MMJAX_NOTEBOOK_SMOKE', '') == '1'
NUM_EPOCHS = 1 if SMOKE else 10
RUNS = pathlib.Path(os.environ.get('MMJAX_NOTEBOOK_RUNS', 'runs')) / 'gradient_blending' / ('smoke' if SMOKE else 'full')

# %% include="cgmnist"

# %% [markdown]
# ## The method
#
# A late-fusion network has a head per modality and a fused head, each with a cross-entropy loss
# $\mathcal{L}_i$. G-Blend trains on the blended loss (Eq. 6)
#
# $$\mathcal{L}_{\text{blend}} = \sum_{i=1}^{k+1} w_i\, \mathcal{L}_i .$$
#
# **Overfitting and generalization.** With $\mathcal{L}^{T}_N$ and $\mathcal{L}^{V}_N$ the loss on
# training data $T$ and on a held-out set $V$ after $N$ epochs, the overfitting is
# $O_N = \mathcal{L}^{V}_N - \mathcal{L}^{T}_N$. Over the next $n$ epochs
#
# $$\Delta G_{N,n} = \mathcal{L}^{V}_N - \mathcal{L}^{V}_{N+n}, \qquad
#   \Delta O_{N,n} = O_{N+n} - O_N, \qquad
#   \text{OGR} = \left|\frac{\Delta O_{N,n}}{\Delta G_{N,n}}\right| .$$
#
# A small OGR means the head gains generalization without overfitting.
#
# **Optimal blend (Proposition 1).** Minimizing the overfitting of the blended gradient for a
# given gain in generalization gives
#
# $$w_i^{*} = \frac{1}{Z}\, \frac{\Delta G_i}{\Delta O_i^{2}}, \qquad
#   Z = \sum_j \frac{\Delta G_j}{2\,\Delta O_j^{2}} .$$
#
# mmjax's default (`method.weight_rule='paper'`) is this formula with the signed $\Delta O_i$
# squared (only $|\Delta O_i|$ is floored, against division by zero); a head with
# $\Delta G_i \le 0$ gets weight 0. `weight_rule='clamped'` keeps an older variant that clamps
# $\Delta O_i$ from below first.
#
# **Estimation.** Each head $i$ is trained alone from the current state for $n$ epochs and
# $\Delta G_i$, $\Delta O_i$ are measured on $V$ (8% of the training data held out) and an equal
# subset $T'$ of the training data. *Offline* (Algorithm 2) estimates once at the start and
# keeps the weights; *online* (Algorithm 3) re-estimates at every super-epoch boundary. mmjax
# runs the $k+1$ estimation trainings as one `jax.vmap`-ed program, and its `gradient` estimator
# computes the first-order form of Proposition 1 inside the train step. The weights are arrays in
# the train state: changing them never recompiles the step.

# %% [markdown]
# ## Run
#
# G-Blend online against `uniform` (every head's loss with weight 1, the naive multi-task
# baseline). Estimates before epoch 0, after a warm-up epoch, then every two epochs.

# %%
uniform_config = config_for('method=uniform,encoder=mlp')
train.train_and_evaluate(uniform_config, str(RUNS / 'uniform'))

gblend_config = config_for('method=gblend,estimator=online,encoder=mlp')
gblend_config.method.warmup_epochs = 1
gblend_config.method.super_epoch = 2
train.train_and_evaluate(gblend_config, str(RUNS / 'gblend'))
print(gblend_config.method)

# %% [markdown]
# ## Diagnose
#
# **The estimates.** Each record of the train split written at an estimate holds, per head,
# $\Delta G$ (`delta_g`), $\Delta O$ (`delta_o`), the OGR and the weight $w$.

# %%
gblend, uniform = report.load_run(RUNS / 'gblend'), report.load_run(RUNS / 'uniform')
heads = gblend.heads
rows = ['| epoch | quantity | ' + ' | '.join(heads) + ' |', '|---|---|' + '---|' * len(heads)]
for record in gblend.records:
  if record['split'] == 'train' and 'loss/fused' not in record:  # an estimate's own record
    for quantity in ('delta_g', 'delta_o', 'ogr', 'weight'):
      values = ' | '.join(f"{record[f'gblend/{quantity}/{h}']:.4f}" for h in heads)
      rows.append(f"| {record['epoch']} | {quantity} | {values} |")
display(Markdown('\n'.join(rows)))

# %% [markdown]
# **Weights and OGR over time.** A new estimate takes effect where the step line jumps. A head
# with a high OGR (it overfits more than it generalizes) should receive a low weight.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained')
report.plot_gblend_weights(gblend, ax=axes[0])
report.plot_ogr(gblend, ax=axes[1])
plt.show()

# %% [markdown]
# **Accuracy and loss per head.** Compare the gap between train (dotted), val (dashed) and test
# (solid) of each head: the overfitting G-Blend measures.

# %%
fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout='constrained')
for column, run in enumerate((uniform, gblend)):
  report.plot_accuracy(run, ax=axes[0, column])
  report.plot_loss(run, ax=axes[1, column])
plt.show()
display(Markdown(report.comparison_table([uniform, gblend]).to_markdown()))

# %% [markdown]
# The same table and plots come from the command line for any run directories:
#
# ```bash
# python -m mmjax.report runs/gradient_blending/full/uniform runs/gradient_blending/full/gblend --out report/
# ```
