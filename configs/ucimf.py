"""UCI Multiple Features digits (2,000 examples, six views), two or more views as modalities.

    python -m mmjax.main --config configs/ucimf.py:method=uniform --workdir /tmp/ucimf
    python -m mmjax.main --config configs/ucimf.py:views=fac+mor,method=vanilla --workdir /tmp/u2

Arguments: views=V1+V2[+...] from fou, fac, kar, pix, zer, mor; method=NAME; smoke; seed=N;
and the method options modality=VIEW (unimodal), estimator=... (gblend), mode=... (greedy).
"""

import ml_collections

from mmjax import config_lib

DEFAULT_VIEWS = 'fou+pix'


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(views=DEFAULT_VIEWS))
  views = tuple(v for v in args.views.split('+') if v)
  config = config_lib.base_config()
  config.seed = args.seed
  config.data = ml_collections.ConfigDict({
      'name': 'ucimf', 'modalities': views, 'val_fraction': 0.1, 'test_fraction': 0.2})
  config.model.encoders = {v: {'name': 'mlp', 'hidden': (256,), 'features': 128, 'dropout': 0.0}
                           for v in views}
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.num_epochs = 30
  config.log_every_steps = 10
  config_lib.set_method(config, args)
  if args.smoke:
    config.num_epochs = 2
    for v in views:
      config.model.encoders[v]['hidden'] = (32,)
      config.model.encoders[v]['features'] = 16
  return config
