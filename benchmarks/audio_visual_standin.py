"""A config of the audio-visual literature's model on random inputs of CREMA-D's shapes, for
step-cost benchmarks only (``benchmarks/accelerator.py``): no data set needs preparing.

    nice -n 10 python benchmarks/accelerator.py --configs 'audio_visual_standin:batch=4' \
        --methods vanilla,greedy --dtypes float32,bfloat16 --steps 3 --rounds 2 --no_torch

Two modalities as OGM-GE feeds them: ``audio``, a 257x188 log-spectrogram, through
``resnet18_spectrogram``; ``visual``, ``frames`` (default 1) 224x224 RGB frames, through
``resnet18_frames``; 6 classes; SGD (momentum 0.9, lr 1e-3, weight decay 1e-4) and batch 64, the
OGM-GE recipe. The inputs are Gaussian noise with random labels: the step costs what the real
data's step costs, but nothing is learnt.

Arguments: method=NAME (and any scalar option of it), batch=N, frames=N, smoke (width-8
encoders on 65x47 spectrograms and 64x64 frames, batch 4: seconds on a CPU).
"""

import ml_collections
import numpy as np

from mmjax import config_lib, data, models

NUM_CLASSES = 6


@data.register('audio_visual_standin', options={'num_examples': 8, 'spectrogram': (257, 188),
                                                'frames': 1, 'frame_size': 224})
def build_standin(seed, num_examples, spectrogram, frames, frame_size):
  """Gaussian ``audio`` [F, T] and ``visual`` [frames, size, size, 3], random labels."""
  rng = np.random.default_rng(seed)

  def split(n):
    inputs = {'audio': rng.normal(size=(n, *spectrogram)).astype(np.float32),
              'visual': rng.normal(size=(n, frames, frame_size, frame_size, 3)).astype(np.float32)}
    return inputs, rng.integers(0, NUM_CLASSES, n)

  return data.from_arrays({'train': split(num_examples), 'val': split(2), 'test': split(2)},
                          name='audio_visual_standin', num_classes=NUM_CLASSES)


def get_config(arg=None):
  args = config_lib.parse_arg(arg, **config_lib.common_args(batch=0, frames=1))
  config = config_lib.base_config()
  config.seed = args.seed
  width, spectrogram, frame_size, batch = ((8, (65, 47), 64, 4) if args.smoke
                                           else (64, (257, 188), 224, 64))
  batch = args.batch or batch
  config.data = ml_collections.ConfigDict({
      'name': 'audio_visual_standin', 'num_examples': 2 * batch, 'spectrogram': spectrogram,
      'frames': args.frames, 'frame_size': frame_size})
  config.model.encoders = {'audio': models.encoder_config('resnet18_spectrogram', width=width),
                           'visual': models.encoder_config('resnet18_frames', width=width)}
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.batch_size = batch
  config.eval_batch_size = 2
  config.num_epochs = 1
  config_lib.set_method(config, args)
  return config
