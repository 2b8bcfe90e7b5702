"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement.

Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022 (official code: GeWu-Lab/OGM-GE_CVPR2022, ``main.py``). One fused cross-entropy
trains the model; each modality's encoder gradient is scaled down while that modality
dominates, and Gaussian noise is added to keep SGD's generalisation ability.

Per mini-batch ``B`` (Algorithm 1), for modality ``u`` with features ``phi^u`` and the fused
linear head ``z = sum_u W^u phi^u + b``:

- score (Eq. 8): ``s^u = sum_{i in B} softmax(W^u phi^u_i + b / M)[y_i]``, the probability of
  the true label from modality ``u``'s share of the fused logits (``M`` modalities);
- discrepancy ratio (Eq. 9): ``rho^u = s^u / s^{u'}`` for two modalities; with more,
  ``rho^u = s^u / min_{u' != u} s^{u'}`` (the same coefficients as BalanceMM's variant);
- coefficient (Eq. 10): ``k^u = 1 - tanh(alpha * rho^u)`` if ``rho^u > 1``, else ``1``: only
  the dominant modality is slowed, and ``k`` jumps from 1 to ``1 - tanh(alpha)`` at ``rho = 1``
  (e.g. ``alpha = 0.1``, ``rho = 2``: ``k = 1 - tanh(0.2) = 0.80263``);
- modulated update (Eq. 11 with Sec. 3.3's enhancement):
  ``theta^u <- theta^u - eta (k^u g(theta^u) + h(theta^u))``, ``h ~ N(0, Sigma)``.

Defaults (``DEFAULTS``) are the official code's: ``alpha = 0.1`` (its README command; it
recommends 0.8 for CREMA-D), modulation in epochs ``modulation_starts = 0`` to
``modulation_ends = 50`` inclusive (0-based epochs, the window test of the fixed code).

Departures, each a documented choice (options in brackets):

- Noise covariance (``noise``): the paper draws ``h`` from the covariance of SGD's gradient
  noise. Neither the paper's experiments nor we form that matrix: the default
  ``'tensor_std'`` is the official code's approximation, i.i.d. noise per parameter tensor
  with ``sigma = std(g) + 1e-8`` (unbiased std over the entries of that tensor's gradient,
  taken before scaling by ``k``, not scaled by ``k``), added to every modulated tensor of
  every modality, including the one with ``k = 1``. ``'sgd_diagonal'`` is closer to the
  paper: the diagonal of the mini-batch gradient's covariance, estimated in the step from
  ``noise_chunks`` equal chunks of the batch, ``Var_c(g_c) / C`` per parameter
  (:func:`minibatch_gradient_variance`; costs a second, chunked backward pass; BatchNorm
  statistics are per chunk there). ``'none'`` is plain OGM (the paper's ablation without GE).
- Modulated parameters (``modulated_parameters``): the paper modulates all of encoder
  ``theta^u``; the default ``'encoder'`` does (every parameter labelled ``branch/<u>``, see
  :mod:`mmjax.models.groups`). The official code touches only 4-D gradients (ResNet conv
  kernels; BatchNorm and biases untouched): ``'conv_kernels'``.
- Scores (``score``): ``'fused_head'`` (default) is Eq. 8 and the official code, from the
  late-fusion model's linear fused head split by modality
  (:meth:`mmjax.models.late_fusion.LateFusionClassifier.fused_parts`, ``concat`` or ``sum``
  fusion, no ``fused_hidden``). ``'unimodal_heads'`` reads the per-modality probe heads
  instead (trained on detached features, so they do not change the update): for models whose
  fused head is not linear (MMTM, ``fused_hidden``, a user's model).
- At ``rho = 1`` exactly no modality is modulated (Eq. 10); the official code damps the audio
  branch there. ``coefficient='continuous'`` is a named variant, ``1 - tanh(alpha * relu(rho
  - 1))``, without the jump at 1; the default is Eq. 10.
- Scores are clamped below at 1e-30 before dividing, so a batch whose scores underflow gives
  ``k = 0`` for the other modality (the official code divides by zero) and never NaN.
- Weight decay and momentum are the optimiser's, after the modulation, as in PyTorch's SGD.
  The paper and the official code use SGD with momentum; an Adam-type optimiser divides each
  parameter's step by its gradient's running RMS and so largely cancels a slowly varying ``k``
  (a warning says so): use ``optimizer.name = 'sgd'`` to compare with the paper.

Everything runs inside the one compiled step: the coefficients from the batch, the window
flag (``method_state['modulating']``, recomputed for the next step's epoch) and the noise key
(``method_state['noise_key']``, the method's own stream :data:`RNG_STREAM`) are arrays, so
entering or leaving the window never recompiles the step.

Logged per step (epoch means): ``ogm_ge/ratio/<u>``, ``ogm_ge/coefficient/<u>`` (the ``k``
computed from the batch, applied when ``ogm_ge/modulating`` is 1).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from mmjax.context import RunContext
from mmjax.data.dataset import derive_seed
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo
from mmjax.models import groups
from mmjax.models.late_fusion import LateFusionClassifier

Array = jax.Array
PyTree = Any

RNG_STREAM = 0x6f676d67
"""The noise stream: its key is ``PRNGKey(derive_seed(seed, RNG_STREAM))``."""
SCORES = ('fused_head', 'unimodal_heads')
NOISES = ('tensor_std', 'sgd_diagonal', 'none')
MODULATED_PARAMETERS = ('encoder', 'conv_kernels')
COEFFICIENTS = ('paper', 'continuous')
MIN_SCORE = 1e-30


def modality_scores(logits: Mapping[str, Array], labels: Array) -> dict[str, Array]:
  """``s^u = sum_i softmax(z^u_i)[y_i]`` (Eq. 8) for each modality's logits ``z^u``."""
  return {m: jnp.take_along_axis(jax.nn.softmax(z.astype(jnp.float32), axis=-1),
                                 labels[:, None], axis=-1).sum()
          for m, z in logits.items()}


def discrepancy_ratios(scores: Mapping[str, Array]) -> dict[str, Array]:
  """``rho^u = s^u / min_{u' != u} s^{u'}`` (Eq. 9; ``s^u / s^{u'}`` for two modalities)."""
  if len(scores) < 2:
    raise ValueError(f'discrepancy ratios need two or more modalities; got {list(scores)}.')
  clamped = {m: jnp.maximum(s, MIN_SCORE) for m, s in scores.items()}
  return {m: clamped[m] / jnp.min(jnp.stack([s for o, s in clamped.items() if o != m]))
          for m in clamped}


def modulation_coefficients(ratios: Mapping[str, Array], alpha: float,
                            rule: str = 'paper') -> dict[str, Array]:
  """``k^u = 1 - tanh(alpha rho^u)`` where ``rho^u > 1``, else 1 (Eq. 10, ``rule='paper'``);
  ``rule='continuous'``: ``k^u = 1 - tanh(alpha * relu(rho^u - 1))``."""
  if rule not in COEFFICIENTS:
    raise ValueError(f'method.coefficient = {rule!r}; valid rules are {list(COEFFICIENTS)}.')
  if rule == 'continuous':
    return {m: 1.0 - jnp.tanh(alpha * jax.nn.relu(r - 1.0)) for m, r in ratios.items()}
  return {m: jnp.where(r > 1.0, 1.0 - jnp.tanh(alpha * r), 1.0) for m, r in ratios.items()}


def noise_scale(grad: Array) -> Array:
  """The official code's ``sigma = std(g) + 1e-8``: the unbiased standard deviation of the
  entries of one gradient tensor (population std for a single entry)."""
  ddof = 1 if grad.size > 1 else 0
  return jnp.std(grad.astype(jnp.float32), ddof=ddof) + 1e-8


def modulated_leaves(labels: PyTree, params: PyTree, modalities: Sequence[str],
                     modulated_parameters: str) -> PyTree:
  """Per leaf of ``params``: the modality whose encoder it belongs to and which is modulated,
  or ``''``."""
  if modulated_parameters not in MODULATED_PARAMETERS:
    raise ValueError(f'method.modulated_parameters = {modulated_parameters!r}; valid choices are '
                     f'{list(MODULATED_PARAMETERS)}.')
  owners = {groups.label(groups.BRANCH, m): m for m in modalities}

  def owner(label: str, leaf: Array) -> str:
    if modulated_parameters == 'conv_kernels' and jnp.ndim(leaf) != 4:
      return ''
    return owners.get(label, '')

  return jax.tree.map(owner, labels, params)


def minibatch_gradient_variance(chunk_grads: PyTree) -> PyTree:
  """Per parameter, the variance of the mini-batch gradient from ``C`` chunk gradients (leading
  axis): ``sum_c (g_c - mean_c g_c)^2 / ((C - 1) C)``. A chunk of ``B / C`` examples has
  ``C`` times the variance of the whole batch's mean gradient, hence the second ``1 / C``."""
  def variance(g: Array) -> Array:
    chunks = g.shape[0]
    return jnp.var(g.astype(jnp.float32), axis=0, ddof=1) / chunks
  return jax.tree.map(variance, chunk_grads)


def modulate_gradients(grads: PyTree, owners: PyTree, coefficients: Mapping[str, Array],
                       key: Array, noise_scales: PyTree | None = None, *,
                       active: Array | bool = True) -> PyTree:
  """``k^u g + h`` on every leaf owned by modality ``u`` (``owners`` from
  :func:`modulated_leaves`), ``h ~ N(0, diag(s^2))`` with ``s`` the leaf's entry of
  ``noise_scales`` (a scalar, e.g. :func:`noise_scale`, or one per parameter); no noise when
  ``noise_scales`` is None. Other leaves and, where ``active`` is false, every leaf unchanged."""
  leaves, treedef = jax.tree.flatten(grads)
  owner_leaves = treedef.flatten_up_to(owners)
  scale_leaves = (treedef.flatten_up_to(noise_scales) if noise_scales is not None
                  else [None] * len(leaves))
  keys = jax.random.split(key, len(leaves))
  out = []
  for g, m, scale, k in zip(leaves, owner_leaves, scale_leaves, keys):
    if not m:
      out.append(g)
      continue
    new = g * coefficients[m].astype(g.dtype)
    if scale is not None:
      new = new + (scale * jax.random.normal(k, g.shape, jnp.float32)).astype(g.dtype)
    out.append(jnp.where(active, new, g))
  return jax.tree.unflatten(treedef, out)


def modulation_window(cfg: Mapping[str, Any]) -> tuple[int, int]:
  """``(method.modulation_starts, method.modulation_ends)`` of a method's options, checked: 0-based
  epochs, inclusive, ``starts <= ends`` (a ``ValueError`` naming the key otherwise)."""
  starts, ends = cfg['modulation_starts'], cfg['modulation_ends']
  for key, value in (('modulation_starts', starts), ('modulation_ends', ends)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f'method.{key} = {value!r} must be a non-negative integer (0-based epoch).')
  if ends < starts:
    raise ValueError(f'method.modulation_ends = {ends} is before method.modulation_starts '
                     f'= {starts}.')
  return starts, ends


def in_window(epoch: Array | int, starts: int, ends: int) -> Array:
  """Whether 0-based ``epoch`` is in the inclusive modulation window ``[starts, ends]``."""
  epoch = jnp.asarray(epoch)
  return (epoch >= starts) & (epoch <= ends)


@register
class OnTheFlyGradientModulation(Method):
  """OGM-GE over a late-fusion model (module docstring): the fused loss alone trains the model."""

  name = 'ogm_ge'
  PLOTS = ('ogm_ge_coefficients',)
  DEFAULTS = {
      'alpha': 0.1,
      'modulation_starts': 0,  # first modulated epoch, 0-based
      'modulation_ends': 50,  # last modulated epoch, inclusive
      'noise': 'tensor_std',  # tensor_std | sgd_diagonal | none (OGM without GE)
      'noise_chunks': 4,  # chunks of the batch for noise='sgd_diagonal'
      'score': 'fused_head',  # fused_head | unimodal_heads
      'modulated_parameters': 'encoder',  # encoder | conv_kernels
      'coefficient': 'paper',  # paper (Eq. 10) | continuous
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    self.alpha = float(cfg['alpha'])
    if not self.alpha >= 0 or not jnp.isfinite(self.alpha):
      raise ValueError(f'method.alpha = {cfg["alpha"]!r} must be finite and non-negative.')
    self.starts, self.ends = modulation_window(cfg)
    choices = {'noise': NOISES, 'score': SCORES, 'modulated_parameters': MODULATED_PARAMETERS,
               'coefficient': COEFFICIENTS}
    for key, valid in choices.items():
      if cfg[key] not in valid:
        raise ValueError(f'method.{key} = {cfg[key]!r}; valid choices are {list(valid)}.')
    self.noise, self.score = cfg['noise'], cfg['score']
    self.noise_chunks = cfg['noise_chunks']
    if not isinstance(self.noise_chunks, int) or isinstance(self.noise_chunks, bool) or (
        self.noise_chunks < 2):
      raise ValueError(f'method.noise_chunks = {self.noise_chunks!r} must be an integer >= 2.')
    self.modulated_parameters, self.coefficient = cfg['modulated_parameters'], cfg['coefficient']
    if len(self.modalities) < 2:
      raise ValueError(f'OGM-GE needs two or more modalities; got {list(self.modalities)}.')
    self.steps_per_epoch = 1
    self._seed = 0
    self._parameter_groups: Callable[[PyTree], PyTree] | None = None

  def setup(self, ctx: RunContext) -> None:
    if self.score == 'fused_head':
      model = ctx.model
      if not (isinstance(model, LateFusionClassifier) and model.has_linear_fused_head):
        raise ValueError(
            "method.score = 'fused_head' needs the late_fusion model with a linear fused head "
            f"({LateFusionClassifier.LINEAR_FUSED_HEAD}); use "
            "method.score = 'unimodal_heads' for this model.")
    if self.noise == 'sgd_diagonal' and ctx.config.batch_size % self.noise_chunks:
      raise ValueError(
          f"method.noise = 'sgd_diagonal' splits each batch into method.noise_chunks = "
          f'{self.noise_chunks} equal chunks; batch_size = {ctx.config.batch_size} is not a '
          'multiple of it.')
    if ctx.config.optimizer.name != 'sgd':
      logging.warning(
          'OGM-GE scales gradients; optimizer.name = %r normalises gradient scale per parameter '
          "and largely cancels the modulation (the paper uses SGD: optimizer.name = 'sgd').",
          ctx.config.optimizer.name)
    self.steps_per_epoch = ctx.steps_per_epoch
    self._seed = ctx.seed
    self._parameter_groups = ctx.model.parameter_groups
    shapes = jax.eval_shape(lambda: ctx.model.init(
        jax.random.PRNGKey(0), {m: jnp.zeros((1, *s)) for m, s in ctx.input_shapes.items()},
        train=False))['params']
    owners = jax.tree.leaves(modulated_leaves(self._parameter_groups(shapes), shapes,
                                              self.modalities, self.modulated_parameters))
    missing = [m for m in self.modalities if m not in owners]
    if missing:
      raise ValueError(
          f'method.modulated_parameters = {self.modulated_parameters!r} selects no parameter of '
          f"modality {missing[0]!r}'s encoder; 'conv_kernels' needs convolutional encoders, "
          "'encoder' modulates every encoder parameter.")

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 if h == 'fused' else 0.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    return {**super().init_state(),
            'modulating': in_window(0, self.starts, self.ends),
            'noise_key': jax.random.PRNGKey(derive_seed(self._seed, RNG_STREAM))}

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    kwargs = super().model_kwargs(method_state, rng)
    if self.score == 'fused_head':
      kwargs['decompose_fused'] = True
    return kwargs

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """The fused loss's gradients, each encoder's modulated by Eqs. 8-11 and the GE noise."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    outputs, losses, model_state, intermediates = aux
    if self.score == 'fused_head':
      logits = intermediates['fused_parts'][0]
    else:
      logits = {m: outputs[m] for m in self.modalities}
    ratios = discrepancy_ratios(modality_scores(logits, batch['label']))
    coefficients = modulation_coefficients(ratios, self.alpha, self.coefficient)
    owners = modulated_leaves(self._parameter_groups(params), params, self.modalities,
                              self.modulated_parameters)
    grads = modulate_gradients(grads, owners, coefficients, method_state['noise_key'],
                               self._noise_scales(loss_fn, params, batch, grads),
                               active=method_state['modulating'])
    intermediates = {**intermediates, self.name: {'ratio': ratios, 'coefficient': coefficients}}
    return (loss, (outputs, losses, model_state, intermediates)), grads

  def _noise_scales(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                    grads: PyTree) -> PyTree | None:
    """The GE noise's standard deviations per leaf (module docstring, ``noise``)."""
    if self.noise == 'none':
      return None
    if self.noise == 'tensor_std':
      return jax.tree.map(noise_scale, grads)
    chunks = jax.tree.map(
        lambda x: x.reshape(self.noise_chunks, x.shape[0] // self.noise_chunks, *x.shape[1:]),
        batch)
    chunk_grads = jax.vmap(lambda chunk: jax.grad(lambda p: loss_fn(p, chunk)[0])(params))(chunks)
    return jax.tree.map(jnp.sqrt, minibatch_gradient_variance(chunk_grads))

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """Next step's window flag (from its epoch) and a fresh noise key."""
    next_epoch = (info.step + 1) // self.steps_per_epoch
    state = {**method_state,
             'modulating': in_window(next_epoch, self.starts, self.ends),
             'noise_key': jax.random.split(method_state['noise_key'])[0]}
    measured = info.aux[self.name]
    metrics = {f'{self.name}/modulating': method_state['modulating'].astype(jnp.float32)}
    metrics.update({f'{self.name}/ratio/{m}': r for m, r in measured['ratio'].items()})
    metrics.update({f'{self.name}/coefficient/{m}': k for m, k in measured['coefficient'].items()})
    return state, metrics


__all__ = ['COEFFICIENTS', 'MODULATED_PARAMETERS', 'NOISES', 'OnTheFlyGradientModulation',
           'RNG_STREAM', 'SCORES', 'discrepancy_ratios', 'in_window', 'minibatch_gradient_variance',
           'modality_scores', 'modulate_gradients', 'modulated_leaves', 'modulation_coefficients', 'noise_scale']
