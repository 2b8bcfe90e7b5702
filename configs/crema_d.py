"""CREMA-D audio + face frames (6 emotions), the OGM-GE recipe, on a folder made by
`mmjax prepare crema_d --raw CREMA-D --out DIR` (docs/datasets.md).

    python -m mmjax.main --config configs/crema_d.py:method=ogm_ge,path=DIR --workdir runs/crema_d
    python -m mmjax.main --config configs/crema_d.py:method=gblend,smoke,path=DIR --workdir /tmp/s

Recipe (OGM-GE, GeWu-Lab/OGM-GE_CVPR2022 ``main.py`` defaults, also MLA's and AGM's README): SGD
momentum 0.9, weight decay 1e-4 (added to the gradient, as PyTorch's SGD), learning rate 1e-3
times 0.1 after epoch 70 (``StepLR(70, 0.1)``), 100 epochs, batch 64; ImageNet-stem ResNet-18s
trained from scratch on the 257 x 188 spectrogram (one channel) and on the frames (mean over
frames and space), late fusion by concatenation; 1 frame per clip (``--fps 1``).

Arguments: method=NAME (every method of ``mmjax list methods``; greedy switches to MMTM), smoke (a
run of seconds: ResNet width 4, 32 x 32 frames, 2 epochs), seed=N, path=DIR (the prepared
folder; or --config.data.path=DIR), encoder=NAME (both modalities), encoder_audio=NAME,
encoder_visual=NAME, and the method's own options. The data options (``num_frames``,
``frame_selection``, ``image_size``, ``val_fraction``, ``worker_count``) are
--config.data.<option>=VALUE.
"""

import ml_collections

from mmjax import config_lib, models

MODALITIES = ('audio', 'visual')
#: The literature's encoders (ImageNet-stem ResNet-18, width 64) per modality.
DEFAULT_ENCODERS = {'audio': 'resnet18_spectrogram', 'visual': 'resnet18_frames'}
#: This data set's settings of the encoders (the rest at their defaults).
ENCODER_PRESETS = {'resnet18_spectrogram': {'width': 64}, 'resnet18_frames': {'width': 64}}
#: Grain worker processes that read, crop, resize and flip the frames off the training thread
#: (torchvision's RandomResizedCrop per frame costs about 13 ms per clip on one core: more than
#: an accelerator's step takes for a batch); the smoke run reads in-process.
WORKER_COUNT = 4
#: The smoke run's encoder widths.
SMOKE_PRESETS = {'resnet18_spectrogram': {'width': 4}, 'resnet18_frames': {'width': 4},
                 'mlp': {'hidden': (16,), 'features': 16}, 'cnn': {'features': 16}}


def audio_visual_config(arg, name, data_defaults):
  """The config of an audio-visual data set prepared by `mmjax prepare NAME` (CREMA-D, AVE,
  Kinetics-Sounds): the OGM-GE recipe, ``data_defaults`` the data set's own options."""
  args = config_lib.parse_arg(arg, **config_lib.common_args(
      path='', encoder='', **{f'encoder_{m}': '' for m in MODALITIES}))
  config = config_lib.base_config()
  config.seed = args.seed
  config.data = ml_collections.ConfigDict({
      'name': name, 'path': args.path, **data_defaults,
      'val_fraction': 0.1, 'worker_count': WORKER_COUNT})
  presets = SMOKE_PRESETS if args.smoke else ENCODER_PRESETS
  encoders = {}
  for m in MODALITIES:
    encoder = args[f'encoder_{m}'] or args.encoder or DEFAULT_ENCODERS[m]
    encoders[m] = models.encoder_config(encoder, **presets.get(encoder, {}))
  config.model.encoders = encoders
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'step'
  config.optimizer.step_epochs = (70,)
  config.optimizer.step_factor = 0.1
  config.batch_size = 64
  config.num_epochs = 100
  config_lib.set_method(config, args)
  if args.smoke:
    config.data.image_size = 32
    config.data.worker_count = 0
    config.optimizer.name = 'adam'
    config.optimizer.schedule = 'constant'
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_epochs = 2
    config.log_every_steps = 2
  return config


def get_config(arg=None):
  return audio_visual_config(arg, 'crema_d', {'num_frames': 1, 'frame_selection': 'first',
                                              'image_size': 224})
