"""AVE audio + frames (28 event classes), the OGM-GE recipe, on a folder made by
`mmjax prepare ave --raw AVE_Dataset --out DIR` (docs/datasets.md).

    python -m mmjax.main --config configs/ave.py:method=ogm_ge,path=DIR --workdir runs/ave

The recipe, encoders and arguments are those of ``configs/crema_d.py`` (OGM-GE's ``main.py``
defaults: SGD momentum 0.9, weight decay 1e-4, learning rate 1e-3 times 0.1 after epoch 70, 100
epochs, batch 64); the input is PMR's AVE preprocessing: the 257 x 1004 spectrogram of the event
segment and 4 of its 1-fps frames spread over it (fanyunfeng-bit/Modal-Imbalance-PMR ``--num_frame``
in its AVE scripts), with AVE's own val split.
"""

from configs.crema_d import audio_visual_config


def get_config(arg=None):
  return audio_visual_config(arg, 'ave', {'num_frames': 4, 'frame_selection': 'spread',
                                          'image_size': 224})
