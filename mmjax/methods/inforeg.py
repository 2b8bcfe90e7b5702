"""InfoReg: information acquisition regulation in the prime learning window.

Huang, Wei, Yang, Hu, "Adaptive Unimodal Regulation for Balanced Multimodal Information
Acquisition", CVPR 2025, arXiv 2503.18595 (official code: GeWu-Lab/InfoReg_CVPR2025,
``main.py`` of commit 939b2ed, ``train_epoch``). Early in training (the *prime learning
window*) a multi-modal network acquires most of its information, and the information-sufficient
modality dominates that acquisition. InfoReg slows the modality that is ahead during the window
by pulling its encoder towards where it stood at the start of the epoch, so that the other
modality acquires more.

Equation numbers: the paper's method section was not retrievable here; its overview figure
(Fig. 2, ``picture/Overview.jpg`` of the official repository) names the regulation criterion
Eqn. 11 and writes the regulation term as ``||w^t_{u;b} - w^{t-1}_u||^2``. The formulas below
are those of the official code, checked against that figure; each is named after its role.

Per mini-batch ``B`` of epoch ``t``, with the late-fusion model's linear fused head split by
modality, ``z^u = W^u phi^u + b / M`` (the shares of the fused logits, as OGM-GE's Eq. 8):

- objective: ``L = CE(z, y) + sum_u CE(z^u, y)`` (fused and every modality's share; the
  shares' losses train the encoders and the fused head's rows of that modality);
- scores (the criterion's input, Fig. 2 "Eqn. 11"): ``s^u = sum_{i in B} softmax(z^u_i)[y_i]``;
- regulation coefficient: the modality ``u`` whose score is the largest is regulated with
  ``beta^u = beta * exp(tanh(s^u - max_{u' != u} s^{u'}))``, every other modality (and every
  modality on a tie) with ``beta^u = 0`` (e.g. ``beta = 0.95``, scores 40 and 30:
  ``beta^u = 0.95 e^{tanh 10} = 2.5824``);
- regulated gradient (Fig. 2's term, the gradient of ``beta^u / 2 ||theta^u - theta^u_t||^2``):
  ``g(theta^u) <- g(theta^u) + beta^u (theta^u - theta^u_t)`` on every parameter of encoder
  ``u``, with ``theta_t`` the parameters at the start of epoch ``t``; applied only inside the
  prime learning window;
- information amount (the trace of the empirical Fisher information): per modality,
  ``T^u_t = sum_{kernels K of encoder u} mean_{entries}(sum_{b in epoch t} g_b(K)^2)``, from
  the regulated gradients of the epoch's steps (kernels: the weights of dense and convolutional
  layers, every parameter leaf with two or more dimensions);
- prime learning window: epoch ``t`` regulates while ``kappa_t > tau`` (``tau = 0.05``),
  ``kappa_t = (T_{t-1} - T_{t-1-W}) / sum_{j=t-W}^{t-1} T_j`` over the last ``W = 10`` epochs
  (``T_j = 0`` for ``j < 0``; ``kappa_0 = 1``), the relative growth of the information amount
  (e.g. ``W = 2``, traces 1, 3, 4 for epochs 0-2: ``kappa_3 = (4 - 1) / (3 + 4) = 3/7``).

Defaults (``DEFAULTS``) are the official code's: ``beta = 0.95``, ``window_threshold = 0.05``,
``window_epochs = 10``, the unimodal share losses on.

Departures, each a documented choice (options in brackets):

- The official code regulates with ``0.95 exp(tanh(s^a - s^v))`` when audio leads and
  ``0.1 exp(tanh(s^v - s^a))`` when video leads: a constant per modality of its data. We use
  one constant ``beta`` for whichever modality leads; with more than two modalities only the
  one with the largest score is regulated, against the best of the others.
- The official code measures the window on the audio trace (hard-coded, audio being its
  information-sufficient modality). ``window_trace = 'largest'`` (default) uses, per epoch, the
  largest of the modalities' traces; naming a modality (``window_trace = 'a'``) uses that
  modality's, as the official code does for audio.
- A window statistic with a zero denominator (no information acquired in the last ``W``
  epochs) closes the window instead of dividing by zero.
- ``unimodal_losses = False`` is a named variant without the shares' cross-entropies: the
  fused loss alone, regulated. The per-modality probe heads of every mmjax model still learn on
  detached features (reporting each modality's own accuracy) and do not touch the encoders;
  the official code's separate unimodal heads receive no gradient.
- Weight decay and momentum are the optimiser's, after the regulation, as in PyTorch's SGD
  (the official code: SGD, momentum 0.9, weight decay 1e-4, lr 0.002, 50 epochs, step decay
  x0.1 at epoch 30). An Adam-type optimiser rescales the regulated gradient per parameter.

Everything runs inside the one compiled step: the epoch-start parameters
(``method_state['anchor']``, set from the parameters at the end of each epoch), the epoch's
trace accumulators, the last ``W + 1`` epoch traces and the window flag are arrays, so
entering or leaving the window never recompiles the step. The anchor doubles the parameter
memory, as the official code's copy of the model does.

Logged per step (epoch means): ``inforeg/beta/<u>`` (the coefficient applied),
``inforeg/unimodal_loss/<u>``, ``inforeg/regulating``; per epoch: ``inforeg/trace/<u>`` (the
epoch's information amount) and ``inforeg/window_statistic`` (``kappa`` of the next epoch).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from mmjax.context import RunContext
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo
from mmjax.methods.ogm_ge import modality_scores, modulated_leaves
from mmjax.models.late_fusion import LateFusionClassifier

Array = jax.Array
PyTree = Any

LARGEST = 'largest'


def regulation_coefficients(scores: Mapping[str, Array], beta: float) -> dict[str, Array]:
  """``beta^u = beta exp(tanh(s^u - max_{u' != u} s^{u'}))`` for the modality with the
  strictly largest score, 0 for the others (module docstring, regulation coefficient)."""
  if len(scores) < 2:
    raise ValueError(f'InfoReg needs two or more modalities; got {list(scores)}.')
  out = {}
  for m, s in scores.items():
    gap = s - jnp.max(jnp.stack([o for n, o in scores.items() if n != m]))
    out[m] = jnp.where(gap > 0, beta * jnp.exp(jnp.tanh(gap)), 0.0)
  return out


def add_proximal_term(grads: PyTree, params: PyTree, anchor: PyTree, owners: PyTree,
                      coefficients: Mapping[str, Array]) -> PyTree:
  """``g + beta^u (theta - theta_t)`` on every leaf owned by modality ``u`` (``owners`` from
  :func:`mmjax.methods.ogm_ge.modulated_leaves`); other leaves unchanged."""
  def regulate(g, p, a, owner):
    if not owner:
      return g
    return g + (coefficients[owner] * (p.astype(jnp.float32) - a.astype(jnp.float32))
                ).astype(g.dtype)
  return jax.tree.map(regulate, grads, params, anchor, owners)


def fisher_trace(grads: PyTree, owners: PyTree, modalities: Sequence[str]) -> dict[str, Array]:
  """Per modality, ``sum_K mean(g(K)^2)`` over the kernels ``K`` (leaves with two or more
  dimensions) of its encoder: one step's share of the information amount ``T^u``."""
  total = {m: jnp.float32(0.0) for m in modalities}
  for g, owner in zip(jax.tree.leaves(grads), jax.tree.leaves(owners)):
    if owner and jnp.ndim(g) >= 2:
      total[owner] = total[owner] + jnp.mean(jnp.square(g.astype(jnp.float32)))
  return total


def window_statistic(history: Array) -> Array:
  """``kappa = (T_{t-1} - T_{t-1-W}) / sum_{j=t-W}^{t-1} T_j`` from the last ``W + 1`` epoch
  traces ``history = [T_{t-1-W}, ..., T_{t-1}]`` (zeros before training); 0 where the sum is 0."""
  recent = jnp.sum(history[1:])
  safe = jnp.where(recent > 0, recent, 1.0)
  return jnp.where(recent > 0, (history[-1] - history[0]) / safe, 0.0)


@register
class InformationAcquisitionRegulation(Method):
  """InfoReg over a late-fusion model with a linear fused head (module docstring)."""

  name = 'inforeg'
  DEFAULTS = {
      'beta': 0.95,
      'window_threshold': 0.05,  # tau: regulate while kappa > tau
      'window_epochs': 10,  # W: epochs in the window statistic
      'window_trace': LARGEST,  # largest | a modality's name
      'unimodal_losses': True,  # the shares' cross-entropies in the objective
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    for key in ('beta', 'window_threshold'):
      value = cfg[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          value >= 0 and jnp.isfinite(value)):
        raise ValueError(f'method.{key} = {value!r} must be a finite number >= 0.')
    self.beta, self.threshold = float(cfg['beta']), float(cfg['window_threshold'])
    self.window_epochs = cfg['window_epochs']
    if not isinstance(self.window_epochs, int) or isinstance(self.window_epochs, bool) or (
        self.window_epochs < 1):
      raise ValueError(f'method.window_epochs = {self.window_epochs!r} must be an integer >= 1.')
    if len(self.modalities) < 2:
      raise ValueError(f'InfoReg needs two or more modalities; got {list(self.modalities)}.')
    self.window_trace = cfg['window_trace']
    if self.window_trace != LARGEST and self.window_trace not in self.modalities:
      raise ValueError(f'method.window_trace = {self.window_trace!r}; valid choices are '
                       f'{[LARGEST, *self.modalities]}.')
    if not isinstance(cfg['unimodal_losses'], bool):
      raise ValueError(f"method.unimodal_losses = {cfg['unimodal_losses']!r} must be True or False.")
    self.unimodal_losses = cfg['unimodal_losses']
    self.steps_per_epoch = 1
    self._parameter_groups: Callable[[PyTree], PyTree] | None = None
    self._param_shapes: PyTree = None

  def setup(self, ctx: RunContext) -> None:
    model = ctx.model
    if not (isinstance(model, LateFusionClassifier) and model.has_linear_fused_head):
      raise ValueError(
          'method inforeg needs the late_fusion model with a linear fused head '
          f"({LateFusionClassifier.LINEAR_FUSED_HEAD}): its scores and unimodal losses are the "
          "fused head's per-modality shares.")
    self.steps_per_epoch = ctx.steps_per_epoch
    self._parameter_groups = model.parameter_groups
    self._param_shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), {m: jnp.zeros((1, *s)) for m, s in ctx.input_shapes.items()},
        train=False))['params']

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 if h == 'fused' else 0.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    zeros = {m: jnp.float32(0.0) for m in self.modalities}
    return {**super().init_state(),
            'anchor': jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._param_shapes),
            'anchored': jnp.bool_(False),
            'epoch_trace': zeros,
            'trace_history': {m: jnp.zeros(self.window_epochs + 1, jnp.float32)
                              for m in self.modalities},
            'window_statistic': jnp.float32(1.0),
            'regulating': jnp.bool_(1.0 > self.threshold)}

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    return {**super().model_kwargs(method_state, rng), 'decompose_fused': True}

  def _owners(self, params: PyTree) -> PyTree:
    return modulated_leaves(self._parameter_groups(params), params, self.modalities, 'encoder')

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """Gradients of the fused and unimodal losses, the leading encoder's regulated."""
    labels = batch['label']

    def objective(p):
      loss, aux = loss_fn(p, batch)
      parts = aux[3]['fused_parts'][0]
      unimodal = {m: optax.softmax_cross_entropy_with_integer_labels(
          parts[m].astype(jnp.float32), labels).mean() for m in self.modalities}
      total = loss + sum(unimodal.values()) if self.unimodal_losses else loss
      return total, (aux, unimodal)

    (total, (aux, unimodal)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    outputs, losses, model_state, intermediates = aux
    parts = jax.lax.stop_gradient(intermediates['fused_parts'][0])
    scores = modality_scores(parts, labels)
    active = (method_state['regulating'] & method_state['anchored']).astype(jnp.float32)
    betas = {m: b * active for m, b in regulation_coefficients(scores, self.beta).items()}
    owners = self._owners(params)
    grads = add_proximal_term(grads, params, method_state['anchor'], owners, betas)
    measured = {'beta': betas, 'unimodal_loss': unimodal,
                'trace': fisher_trace(grads, owners, self.modalities)}
    intermediates = {**intermediates, self.name: measured}
    return (total, (outputs, losses, model_state, intermediates)), grads

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """Accumulates the epoch's trace; at an epoch's end, the next epoch's anchor and window."""
    measured = info.aux[self.name]
    epoch_ends = (info.step + 1) % self.steps_per_epoch == 0
    traces = {m: method_state['epoch_trace'][m] + measured['trace'][m] for m in self.modalities}
    history = {m: jnp.where(epoch_ends, jnp.append(h[1:], traces[m]), h)
               for m, h in method_state['trace_history'].items()}
    if self.window_trace == LARGEST:
      selected = jnp.max(jnp.stack([history[m] for m in self.modalities]), axis=0)
    else:
      selected = history[self.window_trace]
    statistic = jnp.where(epoch_ends, window_statistic(selected), method_state['window_statistic'])
    anchored = method_state['anchored']
    anchor = jax.tree.map(
        lambda new, old, start: jnp.where(epoch_ends, new, jnp.where(anchored, old, start)),
        info.new_params, method_state['anchor'], info.params)
    state = {**method_state,
             'anchor': anchor,
             'anchored': jnp.bool_(True),
             'epoch_trace': {m: jnp.where(epoch_ends, 0.0, t) for m, t in traces.items()},
             'trace_history': history,
             'window_statistic': statistic,
             'regulating': jnp.where(epoch_ends, statistic > self.threshold,
                                     method_state['regulating'])}
    metrics = {f'{self.name}/regulating': method_state['regulating'].astype(jnp.float32)}
    metrics.update({f'{self.name}/beta/{m}': b for m, b in measured['beta'].items()})
    metrics.update({f'{self.name}/unimodal_loss/{m}': l
                    for m, l in measured['unimodal_loss'].items()})
    return state, metrics

  def state_metrics(self, method_state: PyTree) -> dict[str, Array]:
    out = super().state_metrics(method_state)
    out.update({f'{self.name}/trace/{m}': h[-1] for m, h in method_state['trace_history'].items()})
    out[f'{self.name}/window_statistic'] = method_state['window_statistic']
    return out


__all__ = ['InformationAcquisitionRegulation', 'LARGEST', 'add_proximal_term', 'fisher_trace',
           'regulation_coefficients', 'window_statistic']
