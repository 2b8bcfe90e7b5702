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
# # Greedy learning and balanced multi-modal learning
#
# Wu, Jastrzębski, Cho and Geras, *Characterizing and overcoming the greedy nature of learning in
# multi-modal deep neural networks* (ICML 2022). This notebook states the two measures and the
# algorithm, runs them on Colored-and-gray MNIST with mmjax and diagnoses the runs with
# `mmjax.report`.

# %% include="colab_setup"

# %% tags=["parameters"]
SMOKE = os.environ.get('MMJAX_NOTEBOOK_SMOKE', '') == '1'
NUM_EPOCHS = 2 if SMOKE else 10
RUNS = pathlib.Path(os.environ.get('MMJAX_NOTEBOOK_RUNS', 'runs')) / 'greedy_learning' / ('smoke' if SMOKE else 'full')

# %% include="cgmnist"

# %% [markdown]
# ## The measures
#
# The network is an MMTM mid-fusion network: a branch per modality $m_0, m_1$, each with its own
# head, and MMTM modules that let each branch rescale its features from both branches' squeezed
# features. The prediction $f$ averages the branch logits.
#
# **Conditional utilization rate** (Sec. 4.1). Let $f'_k$ be the same network in which branch $k$
# no longer sees the other modality (its MMTM inputs from the other branch are replaced by their
# mean over the training set), read from head $k$. With $A$ the accuracy,
#
# $$u(m_{1-k} \mid m_k) = \frac{A(f) - A(f'_k)}{A(f)}, \qquad
#   d_{\text{util}} = u(m_1 \mid m_0) - u(m_0 \mid m_1) .$$
#
# A large $|d_{\text{util}}|$ means one branch relies on the other modality much more than the
# other way round: the network is imbalanced.
#
# **Conditional learning speed** (Sec. 4.2), a proxy of $d_{\text{util}}$ that is cheap during
# training. For a parameter group $\theta$ and step $t$,
# $\mu_t(\theta) = \|\nabla_\theta \mathcal{L}\|^2 / \|\theta\|^2$ and
# $M(\theta) = \sum_t \mu_t(\theta)$. With $\theta_k$ branch $k$'s own parameters and $\theta'_k$
# the fusion parameters feeding it,
#
# $$s(m_{1-k} \mid m_k) = \log_{10} \frac{M(\theta'_k)}{M(\theta_k)}, \qquad
#   d_{\text{speed}} = s(m_1 \mid m_0) - s(m_0 \mid m_1) .$$
#
# ## Balanced multi-modal learning (Algorithm 1)
#
# From the second epoch on, when $|d_{\text{speed}}| > \alpha$ after a normal step, the next $Q$
# steps are **re-balancing steps** for the branch that learns most through the other modality
# (branch 0 if $d_{\text{speed}} > 0$, else 1): its MMTM scales are frozen to their running
# average, so it must learn from its own modality alone. `mode=guided` is the algorithm,
# `mode=random` re-balances a random branch (the paper's control) and `mode=off` is normal
# training of the same network. In mmjax the choice of step is an array in the train state: one
# compiled step serves all three.

# %% [markdown]
# ## Run
#
# The same MMTM network trained normally (`mode=off`) and with guided re-balancing (`mode=guided`).

# %%
runs = {}
for mode in ('off', 'guided'):
  config = config_for(f'method=greedy,mode={mode},encoder=mlp')
  train.train_and_evaluate(config, str(RUNS / mode))
  runs[mode] = report.load_run(RUNS / mode)
print(runs['guided'].config['method'])

# %% [markdown]
# ## Diagnose
#
# **Learning speed and re-balancing.** $d_{\text{speed}}$ per epoch, the threshold $\pm\alpha$
# dotted, and the epochs in which a branch took re-balancing steps shaded in its colour (from the
# growth of the cumulative counts `greedy/rebalance/<modality>`). With `mode=off` nothing is
# shaded: the speed gap is only measured.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained', sharey=True)
for ax, (mode, run) in zip(axes, runs.items()):
  report.plot_greedy_speed(run, ax=ax)
  ax.set_title(f'mode={mode}')
plt.show()
print('re-balancing windows (epochs):', report.rebalance_windows(runs['guided']))

# %% [markdown]
# **Utilization.** $u(\cdot \mid m_k)$ per modality and $d_{\text{util}}$ (black) on val (dashed)
# and test (solid). Balanced learning should bring $d_{\text{util}}$ towards 0.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout='constrained', sharey=True)
for ax, (mode, run) in zip(axes, runs.items()):
  report.plot_utilization(run, ax=ax)
  ax.set_title(f'mode={mode}')
plt.show()

# %% [markdown]
# **Accuracy.** Per head; on Colored-and-gray MNIST the test split is where relying on colour shows.

# %%
report.plot_accuracy(list(runs.values()), splits=('test',))

# %%
display(Markdown(report.comparison_table(list(runs.values())).to_markdown()))
