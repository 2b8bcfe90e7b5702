"""UCI Multiple Features digits (2,000 examples, six views), two or more views as modalities.

    python -m mmjax.main --config configs/ucimf.py:method=uniform --workdir /tmp/ucimf
    python -m mmjax.main --config configs/ucimf.py:views=fac+mor,method=vanilla --workdir /tmp/u2

Arguments: views=V1+V2[+...] from fou, fac, kar, pix, zer, mor; method=NAME; smoke; seed=N;
encoder=NAME (every view; default mlp) and encoder_<view>=NAME (one view), each with that
encoder's defaults, then overridable with --config.model.encoders.<view>.<option>=VALUE; and any
scalar option of the chosen method (``mmjax list methods``), e.g. modality=VIEW (unimodal),
estimator=... (gblend), mode=... (greedy).
"""

import ml_collections

from mmjax import config_lib, models
from mmjax.data.ucimf import VIEWS

DEFAULT_VIEWS = 'fou+pix'
#: This data set's settings of the built-in encoders (the rest of their options at defaults).
ENCODER_PRESETS = {'mlp': {'hidden': (256,), 'features': 128, 'dropout': 0.0}}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(
      views=DEFAULT_VIEWS, **models.encoder_args(VIEWS, default='mlp')))
  views = tuple(v for v in args.views.split('+') if v)
  unused = [v for v in VIEWS if args[f'encoder_{v}'] and v not in views]
  if unused:
    raise ValueError(f'config argument encoder_{unused[0]}={args[f"encoder_{unused[0]}"]!r}: '
                     f'{unused[0]!r} is not among views={args.views}.')
  config = config_lib.base_config()
  config.seed = args.seed
  config.data = ml_collections.ConfigDict({
      'name': 'ucimf', 'modalities': views, 'val_fraction': 0.1, 'test_fraction': 0.2})
  config.model.encoders = models.encoder_sections(args, views, ENCODER_PRESETS)
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.num_epochs = 30
  config.log_every_steps = 10
  config_lib.set_method(config, args)
  if args.smoke:
    config.num_epochs = 2
    for v in views:
      if config.model.encoders[v]['name'] == 'mlp':
        config.model.encoders[v]['hidden'] = (32,)
        config.model.encoders[v]['features'] = 16
  return config
