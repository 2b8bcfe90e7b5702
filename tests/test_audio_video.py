"""The audio features and frame handling of mmjax.prepare.audio / .video, each checked against
values computed independently (scipy's STFT, a hand DFT, hand-made videos of known colours)."""

import fractions
import math

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from mmjax.prepare import audio, video


def _tone(rate, seconds, frequency, amplitude=0.5):
  t = np.arange(int(rate * seconds)) / rate
  return amplitude * np.sin(2 * np.pi * frequency * t)


def _write_wav(path, samples, rate):
  scipy.io.wavfile.write(path, rate, np.round(samples * 32767).astype(np.int16))


def test_load_audio_scales_int16_and_mixes_channels(tmp_path):
  path = str(tmp_path / 'stereo.wav')
  left, right = np.array([0, 16384, -32768, 8192], np.int16), np.array([0, 0, 0, 8192], np.int16)
  scipy.io.wavfile.write(path, 8000, np.stack([left, right], axis=1))
  np.testing.assert_allclose(audio.load_audio(path, 8000), [0, 0.25, -0.5, 0.25])
  np.testing.assert_allclose(audio.load_audio(path, 8000, channel=0), [0, 0.5, -1.0, 0.25])


def test_load_audio_resamples_keeping_the_tone(tmp_path):
  path = str(tmp_path / 'tone.wav')
  _write_wav(path, _tone(16000, 1.0, 1000.0), 16000)
  samples = audio.load_audio(path, 22050)
  assert samples.shape == (22050,)
  spectrum = np.abs(np.fft.rfft(samples[2000:-2000] * np.hanning(len(samples) - 4000)))
  frequency = np.argmax(spectrum) * 22050 / (len(samples) - 4000)
  assert abs(frequency - 1000.0) < 2.0
  assert abs(np.abs(samples[2000:-2000]).max() - 0.5) < 0.01


def test_ogm_log_spectrogram_equals_scipy_stft(tmp_path):
  """OGM's CREMA-D input on a 1.3-s two-tone clip: tiled to 3 s, librosa-style STFT, log."""
  rate = 22050
  samples = _tone(rate, 1.3, 440.0) + _tone(rate, 1.3, 3000.0, 0.3)
  path = str(tmp_path / 'clip.wav')
  _write_wav(path, samples, rate)
  spectrogram = audio.ogm_log_spectrogram(audio.load_audio(path, rate))
  assert spectrogram.shape == (257, 188)
  clip = np.clip(np.tile(np.round(samples * 32767) / 32768, 3)[:3 * rate], -1, 1)
  window = scipy.signal.get_window('hann', 512)
  _, _, stft = scipy.signal.stft(clip, rate, window='hann', nperseg=512, noverlap=512 - 353,
                                 boundary='even', padded=False)
  expected = np.log(np.abs(stft) * window.sum() + 1e-7)
  np.testing.assert_allclose(spectrogram, expected, atol=2e-4, rtol=1e-4)


def test_stft_magnitude_first_frame_by_hand():
  """Frame 0 is centred on sample 0: the reflect-padded window, a hand DFT."""
  x = np.random.default_rng(0).standard_normal(100)
  n_fft, hop = 16, 5
  got = audio.stft_magnitude(x, n_fft, hop)
  assert got.shape == (9, 1 + 100 // 5)
  padded = np.concatenate([x[8:0:-1], x, x[-2:-10:-1]])  # reflect, edge sample not repeated
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  for t in (0, 3, 20):
    segment = padded[t * hop:t * hop + n_fft] * window
    dft = [abs(sum(segment[n] * np.exp(-2j * np.pi * k * n / n_fft) for n in range(n_fft)))
           for k in range(9)]
    np.testing.assert_allclose(got[:, t], dft, rtol=1e-5, atol=1e-5)


def _kaldi_frame_by_hand(frame, rate, num_bins):
  """One Kaldi fbank frame with loops: DC removal, pre-emphasis, symmetric Hann, 512-point DFT,
  HTK-mel triangles, log."""
  n = len(frame)
  frame = [v - sum(frame) / n for v in frame]
  frame = [frame[i] - 0.97 * frame[max(i - 1, 0)] for i in range(n)]
  frame = [frame[i] * (0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1))) for i in range(n)]
  frame = np.array(frame + [0.0] * (512 - n))
  power = [abs(np.sum(frame * np.exp(-2j * np.pi * k * np.arange(512) / 512))) ** 2
           for k in range(257)]
  mel = lambda f: 1127 * math.log(1 + f / 700)
  low, high = mel(20), mel(rate / 2)
  delta = (high - low) / (num_bins + 1)
  out = []
  for b in range(num_bins):
    left, centre, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
    energy = 0.0
    for k in range(256):
      m = mel(k * rate / 512)
      if left < m < right:
        energy += power[k] * ((m - left) / (centre - left) if m <= centre
                              else (right - m) / (right - centre))
    out.append(math.log(max(energy, np.finfo(np.float32).eps)))
  return np.array(out)


def test_kaldi_fbank_equals_a_hand_computation():
  rate = 16000
  x = _tone(rate, 0.05, 1000.0) + 0.1 * np.random.default_rng(1).standard_normal(800)
  fbank = audio.kaldi_fbank(x, rate, num_mel_bins=23)
  assert fbank.shape == (1 + (800 - 400) // 160, 23)
  for t in (0, 2):
    np.testing.assert_allclose(fbank[t], _kaldi_frame_by_hand(list(x[t * 160:t * 160 + 400]),
                                                              rate, 23), rtol=1e-4, atol=1e-4)


def test_ast_fbank_pads_cuts_and_normalises():
  rate = 16000
  x = _tone(rate, 0.5, 700.0)
  fbank = audio.ast_fbank(x, rate, target_frames=64)
  raw = audio.kaldi_fbank(x - x.mean(), rate)
  assert fbank.shape == (64, 128) and len(raw) == 48
  np.testing.assert_allclose(fbank[:48], (raw + 4.503877) / (2 * 5.141276), rtol=1e-6)
  np.testing.assert_allclose(fbank[48:], 4.503877 / (2 * 5.141276), rtol=1e-6)
  assert audio.ast_fbank(x, rate, target_frames=10).shape == (10, 128)


def test_pmr_spectrogram_shape_and_standardisation():
  spectrogram = audio.pmr_spectrogram(_tone(16000, 2.0, 500.0))
  assert spectrogram.shape == (257, 1004)
  assert abs(spectrogram.mean()) < 1e-4 and abs(spectrogram.std() - 1) < 1e-4


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)


def write_video(path, codec, rate, num_frames, colour_of_frame, size=(32, 24), audio_rate=0,
                audio_seconds=0.0):
  """A video of ``num_frames`` solid-colour frames (``colour_of_frame(i)``), optionally with a
  440-Hz AAC audio track."""
  frames = (np.broadcast_to(colour_of_frame(i), (size[1], size[0], 3)) for i in range(num_frames))
  sound = _tone(audio_rate, audio_seconds, 440.0) if audio_rate else None
  video.write_clip(path, frames, rate, codec=codec, audio=sound, sample_rate=audio_rate)


@pytest.mark.parametrize('suffix, codec', [('flv', 'flv'), ('mp4', 'h264')])
def test_frames_per_second_keeps_the_first_frame_of_each_second(tmp_path, suffix, codec):
  path = str(tmp_path / f'clip.{suffix}')
  # 10 fps, 25 frames: seconds 0, 1, 2 are red, green, blue, but frame 10k+1 is white: only
  # frames 0, 10, 20 (the first of each second) may be kept.
  write_video(path, codec, 10, 25, lambda i: COLOURS[3] if i % 10 == 1 else COLOURS[i // 10])
  frames = video.frames_per_second(path, 8)
  assert frames.shape == (3, 8, 8, 3) and frames.dtype == np.uint8
  np.testing.assert_allclose(frames[:, 4, 4].astype(float), COLOURS[:3], atol=12)
  event = video.frames_per_second(path, 8, seconds=(1, 2))
  np.testing.assert_allclose(event[:, 4, 4].astype(float), COLOURS[1:3], atol=12)


def test_frames_per_second_truncates_a_fractional_rate(tmp_path):
  """29.97 fps keeps frames 0, 29, 58 (OpenCV's int(CAP_PROP_FPS) in the reference script)."""
  path = str(tmp_path / 'ntsc.mp4')
  kept = {0: 0, 29: 1, 58: 2}
  write_video(path, 'h264', fractions.Fraction(30000, 1001), 60,
              lambda i: COLOURS[kept.get(i, 3)])
  frames = video.frames_per_second(path, 4)
  np.testing.assert_allclose(frames[:, 2, 2].astype(float), COLOURS[:3], atol=12)


def test_corrupt_video_raises(tmp_path):
  path = tmp_path / 'broken.flv'
  path.write_bytes(b'FLV\x01 this is not a video')
  with pytest.raises(Exception):
    video.frames_per_second(str(path), 8)


def test_select_frames():
  frames = np.arange(10)[:, None]
  np.testing.assert_array_equal(video.select_frames(frames, 3, 'first')[:, 0], [0, 1, 2])
  np.testing.assert_array_equal(video.select_frames(frames, 3, 'spread')[:, 0], [0, 3, 6])
  np.testing.assert_array_equal(video.select_frames(frames[:2], 3, 'first')[:, 0], [0, 1, 0])
  with pytest.raises(ValueError, match='frame_selection'):
    video.select_frames(frames, 3, 'random')


def test_resize_normalize_by_hand():
  frames = np.broadcast_to(np.array([255, 128, 0], np.uint8), (2, 6, 6, 3))
  out = video.resize_normalize(frames, 4)
  assert out.shape == (2, 4, 4, 3)
  expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
  np.testing.assert_allclose(out[1, 3, 0], expected, rtol=1e-5)


def test_crop_box_follows_torchvision():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = video.crop_box(20, 30, rng)
    assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30
    assert 0.08 * 600 * 0.8 <= h * w <= 600 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1

  class Impossible:  # every try asks for more than the image: the centre-crop fallback
    def uniform(self, low, high):
      return high

    def integers(self, low, high):
      raise AssertionError('no try fits')

  assert video.crop_box(10, 40, Impossible()) == (0, 13, 10, 13)  # too wide: centred
  assert video.crop_box(40, 10, Impossible()) == (13, 0, 13, 10)  # too tall: centred


def test_random_resized_crop_flip_keeps_size_and_flips():
  frame = np.zeros((8, 8, 3), np.float32)
  frame[:, :4] = 1.0  # left half one, right half zero

  class FullCropThenFlip:
    def uniform(self, low, high):
      return 1.0 if high == 1.0 else 0.0  # the whole image, aspect exp(0) = 1

    def integers(self, low, high):
      return 0

    def random(self):
      return 0.0  # < 0.5: flip

  out = video.random_resized_crop_flip(frame[None], FullCropThenFlip())
  np.testing.assert_array_equal(out[0], frame[:, ::-1])
