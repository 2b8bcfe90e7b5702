"""ModelNet40 multi-view (Wu et al. 2022): two MVCNN renders of each CAD model, 40 classes.

First prepare the records once from the MVCNN 12-view renders (docs/datasets.md):

    mmjax prepare modelnet40 --raw modelnet40_images_new_12x --out data/modelnet40

then train, e.g. guided re-balancing over the MMTM network, or a smoke run of seconds:

    mmjax train --config configs/modelnet40.py:method=greedy --config.data.path=data/modelnet40 --workdir runs/mn40_greedy
    mmjax train --config configs/modelnet40.py:method=vanilla,smoke --config.data.path=data/modelnet40 --workdir /tmp/mn40_smoke

Arguments: method=NAME (any method: ``mmjax list methods``; greedy switches the model to MMTM),
smoke, seed=N, views=A+B (the two rendered views, 0-11, that are the modalities ``view_a`` and
``view_b``; default 0+6 as Wu et al.; both must have been prepared), encoder=NAME (both views)
and encoder_view_a=NAME, encoder_view_b=NAME (one view), each with that encoder's defaults, and
the method's own options (e.g. mode=random for greedy).

The recipe is Wu et al.'s (nyukat/greedy_multimodal_learning, ``configs/training_guided.gin``,
``train.py``, ``src/dataset.py``): SGD, learning rate 0.1, no momentum, no weight decay, batch 8,
``ReduceLROnPlateau`` on the train loss (factor 0.3, patience 10 epochs, relative threshold 1e-3,
minimum learning rate 1e-6, i.e. a scale of 1e-5), 299 epochs, the best-val checkpoint; 20% of
train held out as val by their seeded shuffle; ImageNet normalisation and random horizontal flips
(in-process: Grain workers did not pay off on the CPU, see docs/datasets.md; set
``--config.data.worker_count=N`` where they do). Their ``CompletedStopping`` (stop after 5 epochs at 100% train accuracy) is
not reproduced: mmjax runs all epochs. Their branches are torchvision's ResNet-18 (ImageNet stem,
no pretraining) on 224x224 renders, which is the default encoder here, ``resnet18_image``
(width 64, the 512-d average pool, no Dense after it). ``encoder=resnet18`` picks mmjax's
CIFAR-stem ResNet-18 instead, which keeps full resolution through ``layer1`` and so costs far
more per image at 224x224.
"""

import ml_collections

from mmjax import config_lib, models

MODALITIES = ('view_a', 'view_b')
DEFAULT_VIEWS = '0+6'
#: This data set's settings of the built-in encoders (the rest of their options at defaults).
ENCODER_PRESETS = {
    'resnet18_image': {'width': 64},
    'resnet18': {'width': 64, 'features': 512},
    'cnn': {'features': 512},
}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(
      views=DEFAULT_VIEWS, **models.encoder_args(MODALITIES, default='resnet18_image')))
  views = tuple(int(v) for v in args.views.split('+') if v)
  config = config_lib.base_config()
  config.seed = args.seed
  config.data = ml_collections.ConfigDict({
      'name': 'modelnet40', 'path': '', 'views': views, 'val_fraction': 0.2, 'val_seed': 10,
      'worker_count': 0})  # Grain processes for normalise + flip: see docs/datasets.md
  config.model.encoders = models.encoder_sections(args, MODALITIES, ENCODER_PRESETS)
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = 'plateau'
  config.optimizer.plateau_factor = 0.3
  config.optimizer.plateau_patience = 10
  config.optimizer.plateau_rtol = 1e-3
  config.optimizer.plateau_min_scale = 1e-5
  config.batch_size = 8
  config.eval_batch_size = 64
  config.num_epochs = 299
  config.log_every_steps = 100
  config_lib.set_method(config, args)
  if args.smoke:
    # Seconds on tiny renders: narrow encoders, Adam, two epochs.
    for m in MODALITIES:
      section = config.model.encoders[m]
      if section['name'] in ('resnet18', 'resnet18_image'):
        section['width'] = 8
      if 'features' in section:
        section['features'] = 32
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = 'constant'
    config.eval_batch_size = 32
    config.num_epochs = 2
    config.log_every_steps = 4
  return config
