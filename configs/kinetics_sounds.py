"""Kinetics-Sounds audio + frames (31 classes), the OGM-GE recipe, on a folder made by
`mmjax prepare kinetics_sounds --raw K400 --out DIR` (docs/datasets.md).

    python -m mmjax.main --config configs/kinetics_sounds.py:method=ogm_ge,path=DIR --workdir ks

The recipe, encoders and arguments are those of ``configs/crema_d.py`` (OGM-GE's ``main.py``
defaults: SGD momentum 0.9, weight decay 1e-4, learning rate 1e-3 times 0.1 after epoch 70, 100
epochs, batch 64); the input is OGM-GE's Kinetics-Sounds preprocessing: the 1024 x 128 Kaldi
fbank and 3 of the clip's 1-fps frames spread over it (``dataset/dataset.py``: ``seg * i``).
"""

from configs.crema_d import audio_visual_config


def get_config(arg=None):
  return audio_visual_config(arg, 'kinetics_sounds', {'num_frames': 3, 'frame_selection': 'spread',
                                                      'image_size': 224})
