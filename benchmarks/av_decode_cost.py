"""Seconds of one core to decode one clip of CREMA-D, AVE and Kinetics-Sounds with the
preprocessing of ``mmjax prepare``, and to read one example (frame choice, resize, augmentation).

Synthetic clips of the real formats and sizes (a 2.5-s 480 x 360 30-fps FLV + 16-kHz WAV, a 10-s
640 x 360 30-fps MP4 with 44.1-kHz AAC audio), written with PyAV into a temporary folder.

    nice -n 10 python -m benchmarks.av_decode_cost
"""

import os
import sys
import tempfile
import time

import numpy as np
import scipy.io.wavfile

from mmjax.prepare import audio, video

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'tests'))
from test_audio_video import _tone, write_video  # noqa: E402  pylint: disable=wrong-import-position


def seconds_per_call(function, repeats=3):
  function()
  start = time.perf_counter()
  for _ in range(repeats):
    function()
  return (time.perf_counter() - start) / repeats


def main():
  rng = np.random.default_rng(0)
  noise = lambda i: rng.integers(0, 255, 3, dtype=np.uint8)
  with tempfile.TemporaryDirectory() as folder:
    flv, wav, mp4 = (os.path.join(folder, n) for n in ('c.flv', 'c.wav', 'k.mp4'))
    write_video(flv, 'flv', 30, 75, noise, size=(480, 360))
    scipy.io.wavfile.write(wav, 16000, np.round(_tone(16000, 2.5, 300.0) * 32767).astype(np.int16))
    write_video(mp4, 'h264', 30, 300, noise, size=(640, 360), audio_rate=44100,
                audio_seconds=10.0)
    frames = video.frames_per_second(mp4, 224)
    chosen = video.resize_normalize(video.select_frames(frames, 3, 'spread'), 224)
    rows = {
        'CREMA-D audio (ogm_log_spectrogram)':
            lambda: audio.ogm_log_spectrogram(audio.load_audio(wav, 22050)),
        'CREMA-D frames (2.5-s FLV)': lambda: video.frames_per_second(flv, 224),
        'AVE audio (pmr_spectrogram, 10-s MP4)':
            lambda: audio.pmr_spectrogram(audio.load_audio(mp4, 16000)),
        'Kinetics-Sounds audio (ast_fbank, 10-s MP4)':
            lambda: audio.ast_fbank(audio.load_audio(mp4, 16000, channel=0)),
        '10-s MP4 frames (AVE, Kinetics-Sounds)': lambda: video.frames_per_second(mp4, 224),
        'read: 3 frames, resize + normalise': lambda: video.resize_normalize(
            video.select_frames(frames, 3, 'spread'), 224),
        'read: 3 frames, crop + flip (train)': lambda: video.random_resized_crop_flip(chosen, rng),
    }
    print(f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    for name, function in rows.items():
      print(f'{name:48s} {seconds_per_call(function):.3f} s')


if __name__ == '__main__':
  main()
