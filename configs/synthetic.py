"""Synthetic modalities with controllable signal, for tests and controlled experiments.

    python -m mmjax.main --config configs/synthetic.py:method=uniform,smoke --workdir /tmp/syn

Arguments: method=NAME; smoke; seed=N; encoder=NAME (both modalities; default mlp) and
encoder_a=NAME, encoder_b=NAME (one modality), each with that encoder's defaults, then
overridable with --config.model.encoders.<modality>.<option>=VALUE; and any scalar option of the
chosen method (``mmjax list methods``), e.g. modality=NAME (unimodal), estimator=... (gblend),
mode=... (greedy). The data options are set with
--config.data.KEY=VALUE, per modality for dim, signal (class separation), clusters_per_class
(difficulty: 1 is linearly separable, K >= 2 an XOR-like layout), shortcut (a train-only
label shortcut) and noise_dims (label-independent features appended), e.g.
--config.data.signal='(3.0, 1.0)'; see mmjax/data/synthetic.py.
"""

import ml_collections

from mmjax import config_lib, models
from mmjax.data import synthetic as synthetic_data

MODALITIES = ('a', 'b')
#: This data set's settings of the built-in encoders (the rest of their options at defaults).
ENCODER_PRESETS = {'mlp': {'hidden': (64,), 'features': 32, 'dropout': 0.0}}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(
      **models.encoder_args(MODALITIES, default='mlp')))
  config = config_lib.base_config()
  config.seed = args.seed
  per_modality = ('dim', 'signal', 'clusters_per_class', 'shortcut', 'noise_dims')
  options = {k: (v,) * len(MODALITIES) if k in per_modality else v
             for k, v in synthetic_data.OPTIONS.items()}
  options['modalities'] = MODALITIES
  config.data = ml_collections.ConfigDict({'name': 'synthetic', **options})
  config.model.encoders = models.encoder_sections(args, MODALITIES, ENCODER_PRESETS)
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 64
  config.num_epochs = 20
  config.log_every_steps = 10
  config_lib.set_method(config, args)
  if args.smoke:
    config.num_epochs = 2
  return config
